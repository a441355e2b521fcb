"""Run lm-eval tasks on a loaded jaxlm model: what `jaxlm eval --tasks` calls.

A task is an lm-eval task or group name (from lm-eval's registry or `include_path`), or a task
YAML file (`bundled:eval/shakespeare_cloze.yaml` works): the file is read as plain YAML and its
`dataset_kwargs.data_files` are taken relative to the file, so a local task runs from any folder.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from jaxlm.assets import resolve_path
from jaxlm.errors import JaxlmError
from jaxlm.eval.harness import JaxlmLM


def task_config(path: str) -> dict:
    """A task YAML file -> the config dict lm-eval accepts in place of a task name."""
    p = resolve_path(path)
    if not p.is_file():
        raise JaxlmError(f"task file {path} does not exist; give an lm-eval task name or a task YAML file")
    try:
        config = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise JaxlmError(f"task file {path} is not plain YAML ({type(e).__name__}); a task using lm-eval's "
                         f"!function tags goes in a folder given with --include-path") from None
    if not isinstance(config, dict) or "task" not in config:
        raise JaxlmError(f"task file {path} has no `task:` name; it is not an lm-eval task config")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        config["dataset_kwargs"]["data_files"] = {k: _beside(p, v) for k, v in files.items()}
    elif files is not None:
        config["dataset_kwargs"]["data_files"] = _beside(p, files)
    return config


@contextlib.contextmanager
def portable_include_path(include_path: str | None) -> Iterator[str | None]:
    """An lm-eval --include_path folder (`bundled:eval` works) as a copy whose plain-YAML task files name
    their data_files by absolute path (`task_config`), so its tasks run from any folder; lm-eval itself
    reads data_files relative to the current folder. Files with lm-eval's !function tags are copied as
    they are. Yields None for None."""
    if include_path is None:
        yield None
        return
    folder = resolve_path(include_path)
    if not folder.is_dir():
        raise JaxlmError(f"include path {include_path} is not a folder; give a folder of lm-eval task YAMLs")
    with tempfile.TemporaryDirectory(prefix="jaxlm-tasks-") as tmp:
        for f in folder.iterdir():
            if f.suffix in (".yaml", ".yml") and _is_plain_yaml(f):
                (Path(tmp) / f.name).write_text(yaml.safe_dump(task_config(str(f)), sort_keys=False))
            elif f.is_file():
                shutil.copy(f, Path(tmp) / f.name)
        yield tmp


def _is_plain_yaml(path: Path) -> bool:
    try:
        return isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict)
    except (yaml.YAMLError, UnicodeDecodeError):
        return False


def _beside(yaml_path: Path, files):
    if isinstance(files, list):
        return [_beside(yaml_path, f) for f in files]
    f = Path(files)
    return str(f if f.is_absolute() else yaml_path.parent / f)


def evaluate(model, tasks: list[str], *, batch_size: int = 8, include_path: str | None = None,
             num_fewshot: int | None = None, limit: int | None = None, log_samples: bool = False) -> dict:
    """lm-eval's `simple_evaluate` on a jaxlm LanguageModel (or the path of one, loaded once the
    tasks are found); returns its results dict."""
    # lazy: lm-eval's evaluator and the model (JAX) take seconds to import; `import jaxlm.eval` stays without them
    from lm_eval import simple_evaluate

    from jaxlm.inference import checks, load

    checks.integer("batch_size", batch_size, 1)  # before lm-eval indexes its tasks (seconds)
    if num_fewshot is not None:
        checks.integer("num_fewshot", num_fewshot, 0, note="None = the task's own")
    if limit is not None:
        checks.integer("limit", limit, 1, sys.maxsize, note="None = every document")
    if not tasks:
        raise JaxlmError("no tasks given; name lm-eval tasks or task YAML files")
    specs = [task_config(t) if t.endswith((".yaml", ".yml")) else t for t in tasks]
    with portable_include_path(include_path) as include:
        manager = task_manager(specs, include)  # unknown tasks fail before the model loads
        lm = load(model) if isinstance(model, (str, Path)) else model
        return simple_evaluate(model=JaxlmLM(lm=lm, batch_size=batch_size), tasks=specs, num_fewshot=num_fewshot,
                               limit=limit, task_manager=manager, log_samples=log_samples)


def task_manager(specs: list, include_path: str | None = None):
    """lm-eval's TaskManager, indexing its ~15,000 shipped task files (about 30 s on 2 cores) only
    when a task is named that --include-path does not hold."""
    # lazy: lm-eval's task index, as above
    from lm_eval.tasks import TaskManager

    names = [t for t in specs if isinstance(t, str)]
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path or not names else None
    if manager is not None and all(t in manager.all_tasks for t in names):
        return manager
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        raise JaxlmError(f"unknown lm-eval task(s) {', '.join(unknown)}; give a task name lm-eval lists "
                         f"(`lm_eval ls tasks`), a task YAML file, or --include-path for local ones")
    return manager
