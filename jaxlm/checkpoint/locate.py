"""Find the config and the saved parameters behind a path a user gives.

Accepted:
    MODEL_DIR                    config.yaml + params/ (or params/state/)  (save_model, jaxlm convert)
    RUN_DIR                      config.yaml + checkpoints/<step>/params   (jaxlm train; latest step)
    RUN_DIR/checkpoints/<step>   that step's params, config from RUN_DIR
"""

from __future__ import annotations

from pathlib import Path

from jaxlm.checkpoint.params_io import params_item
from jaxlm.errors import JaxlmError
from jaxlm.tokenizer import load_tokenizer


def finished_steps(ckpt_dir: Path) -> list[int]:
    """Steps with a complete checkpoint (Orbax's unfinished saves carry a tmp suffix and are skipped)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit())


def params_disk_bytes(path: str | Path) -> int:
    """Bytes of the files of the params item that `path` (a model dir, run dir or step) holds."""
    params_dir = locate(path)[1]
    return sum(f.stat().st_size for f in Path(params_dir).rglob("*") if f.is_file())


def locate(path: str | Path) -> tuple[Path, Path]:
    """(directory holding config.yaml and the tokenizer, the Orbax params item folder)."""
    config_dir, params_dir = _locate(Path(path).absolute())
    return config_dir, params_item(params_dir)


def _locate(path: Path) -> tuple[Path, Path]:
    if not path.exists():
        raise JaxlmError(f"checkpoint path {path} does not exist; give a model dir, a run dir or "
                         f"RUN_DIR/checkpoints/<step>")
    if (path / "params").is_dir() and path.parent.name == "checkpoints":
        return path.parent.parent, path / "params"
    if (path / "params").is_dir():
        return path, path / "params"
    if (path / "checkpoints").is_dir():
        steps = finished_steps(path / "checkpoints")
        if not steps:
            raise JaxlmError(f"run dir {path} has no finished checkpoint yet; train longer or give another path")
        return path, path / "checkpoints" / str(steps[-1]) / "params"
    raise JaxlmError(f"{path} is not a jaxlm model or run directory (no params/ or checkpoints/); give a "
                     f"directory written by `jaxlm train`, `jaxlm convert` or save_model")


def load_tokenizer_for(path: str | Path):
    """The tokenizer saved with a model dir or run dir (or beside a checkpoint step)."""
    config_dir, _ = locate(path)
    return load_tokenizer(config_dir)
