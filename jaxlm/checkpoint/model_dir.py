"""A model directory: the weights of one model and the config that built it.

    DIR/config.yaml      the full run config (model section and the rest)
    DIR/params/          Orbax checkpoint of the nnx.Param state (a nested dict of arrays)
    DIR/tokenizer.*      the tokenizer files, when known

Written to DIR.tmp-<pid> and renamed, so DIR is either absent or complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import jax
import yaml
from flax import nnx

from jaxlm.config import RunConfig, from_dict, to_dict
from jaxlm.errors import JaxlmError


def save_model(path: str | Path, run_cfg: RunConfig, model: nnx.Module, extra_files: list[str | Path] = (),
               overwrite: bool = False) -> Path:
    """Write `model`'s parameters and `run_cfg` to the model directory `path` atomically."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise JaxlmError(f"output {path} already exists; choose another path or pass overwrite")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(run_cfg), sort_keys=False))
    params = nnx.state(model, nnx.Param).to_pure_dict()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / "params", params)
    for f in extra_files:
        shutil.copy(f, tmp / Path(f).name)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def read_config(path: str | Path) -> RunConfig:
    path = Path(path)
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        raise JaxlmError(f"{path} is not a jaxlm model directory (no config.yaml); give a directory written by "
                         f"`jaxlm train` or `jaxlm convert from-hf`")
    return from_dict(RunConfig, yaml.safe_load(cfg_file.read_text()))


def load_model(path: str | Path, run_cfg: RunConfig | None = None,
               model_config=None) -> tuple[RunConfig, nnx.Module]:
    """Read a model dir, a run dir (latest step) or RUN_DIR/checkpoints/<step> -> (run config, model).

    Only parameters are restored. With `model_config`, that architecture is built instead of the
    saved one (and no LoRA is applied), e.g. to start a run from a model dir; shapes must match.
    """
    import orbax.checkpoint as ocp

    from jaxlm.checkpoint.locate import locate
    from jaxlm.model import abstract_model
    from jaxlm.training.checkpointing import check_param_shapes, saved_param_shapes
    from jaxlm.training.state import prepare_model

    config_dir, params_dir = locate(path)
    run_cfg = run_cfg or read_config(config_dir)
    quant = getattr(run_cfg, "quant", None)
    if quant is not None and quant.enabled:  # a quantized model dir (jaxlm quantize): codes and scales
        from jaxlm.quant import abstract_quantized

        model = abstract_quantized(model_config or run_cfg.model, quant)
    else:
        model = abstract_model(model_config or run_cfg.model)
    if model_config is None:
        model = prepare_model(run_cfg, model)  # a LoRA run's checkpoint holds the adapters too
    graphdef, abstract_state = nnx.split(model)
    target = nnx.state(model, nnx.Param).to_pure_dict()
    with _quiet_absl():
        check_param_shapes(saved_param_shapes(params_dir), target, str(params_dir))
        with ocp.StandardCheckpointer() as ckptr:
            try:
                params = ckptr.restore(params_dir, target)
            except (ValueError, KeyError) as e:
                raise JaxlmError(f"weights in {path} do not match its config: {str(e).splitlines()[0]}") from None
    abstract_state.replace_by_pure_dict(params)
    return run_cfg, nnx.merge(graphdef, abstract_state)


@contextlib.contextmanager
def _quiet_absl():
    """Orbax warns that a CheckpointManager item dir has no top-level metadata file; it restores fine."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
