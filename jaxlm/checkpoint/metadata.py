"""What a saved params folder holds, read without loading an array: its shapes, the check of
those shapes against a model config, and the one-line error for a damaged or incomplete folder."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxlm.errors import JaxlmError


def saved_param_shapes(params_dir: Path) -> dict:
    """{'a/b/c': shape} of an Orbax params folder; JaxlmError when it is missing or unreadable."""
    if not params_dir.is_dir():
        raise JaxlmError(f"no saved parameters at {params_dir}; give a run dir, a checkpoint step dir or a "
                         f"model dir written by jaxlm")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            meta = ckptr.metadata(params_dir)
    except Exception as e:  # Orbax and tensorstore raise plain Exceptions on damaged files
        raise corrupt(params_dir, e) from None
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    shapes = {_path_str(p): tuple(x.shape) for p, x in flat if x is not None}
    if not shapes:
        raise corrupt(params_dir, None)
    return shapes


class CorruptCheckpoint(JaxlmError):
    """A checkpoint whose files are damaged or missing (the trainer falls back to an earlier step)."""


def corrupt(path: Path, error: Exception | None) -> CorruptCheckpoint:
    """One line naming the step (when `path` is in RUN_DIR/checkpoints), the file and the fix."""
    path = Path(path)
    step_dir = next((p for p in (path, *path.parents) if p.parent.name == "checkpoints" and p.name.isdigit()), None)
    what = f"checkpoint step {step_dir.name} ({path})" if step_dir else f"checkpoint {path}"
    detail = "no array metadata: manifest.ocdbt or _METADATA is missing" if error is None else \
        (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    fix = f"delete {step_dir} to use an earlier step" if step_dir else "restore it or point to another checkpoint"
    return CorruptCheckpoint(f"{what} is corrupt or incomplete ({detail}); {fix}")


def check_param_shapes(saved: dict, abstract_params, where: str) -> None:
    """Raise JaxlmError naming every parameter whose saved shape differs from the model config's."""
    want = {_path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    problems = [f"{k}: checkpoint {saved[k]} vs config {want[k]}" for k in want if k in saved and saved[k] != want[k]]
    problems += [f"{k}: missing in checkpoint" for k in want if k not in saved]
    problems += [f"{k}: not in this model config" for k in saved if k not in want]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} in all)" if len(problems) > 6 else "")
        raise JaxlmError(f"checkpoint {where} was written for a different model config: {shown}; use the "
                         f"config it was trained with or a new out_dir")


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
