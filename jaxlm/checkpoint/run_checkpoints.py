"""Run checkpoints: an Orbax CheckpointManager over RUN_DIR/checkpoints/<step>/{params,opt_state,meta}.

- Saves are asynchronous (arrays are copied off the device before `save` returns, files are written
  in a background thread) and atomic: Orbax writes <step>.orbax-checkpoint-tmp-* and renames it when
  complete, so a crash mid-save leaves only the earlier, finished steps (temporary folders are
  ignored and cleaned up on the next start).
- Kept: the last `keep` steps plus the `keep_best` with the lowest loss (the validation loss when the
  run validates); each step's loss is saved with it (<step>/metrics), so the ranking survives a resume.
- Restore takes abstract targets carrying the *current* mesh's shardings, so a checkpoint saved on
  8 devices restores onto 1 or 4 (Orbax reshards while reading).
- `params` is the trainable nnx.Param pure dict, the same tree as a model directory's params/.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxlm.errors import JaxlmError

ITEMS = ("params", "opt_state", "meta")


class RunCheckpoints:
    def __init__(self, directory: str | Path, every: int, keep: int, keep_best: int, async_save: bool):
        self.directory = Path(directory).absolute()
        self.every = every
        keep_policies = [policies.LatestN(n=max(keep, 1))]
        if keep_best > 0:
            keep_policies.append(policies.BestN(get_metric_fn=lambda m: -m["loss"], n=keep_best,
                                                keep_checkpoints_without_metrics=False))
        # best_fn only makes Orbax write each step's metrics (<step>/metrics), so that the ranking survives a
        # restart; which steps stay is the preservation policy's choice.
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True,
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            best_fn=(lambda m: m["loss"]) if keep_best > 0 else None, best_mode="min")
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int, last_step: int) -> bool:
        return step == last_step or (self.every > 0 and step % self.every == 0)

    def save(self, step: int, params, opt_state, meta: dict, loss: float) -> None:
        """Start an (asynchronous) save of the state after `step` optimizer updates."""
        args = ocp.args.Composite(params=ocp.args.StandardSave(params, save_args=_layer_chunked(params)),
                                  opt_state=ocp.args.StandardSave(opt_state),
                                  meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, metrics={"loss": float(loss)}, force=True)

    def restore(self, step: int, abstract_params, abstract_opt_state):
        """(params, opt_state, meta) of `step`, placed as the abstract targets' shardings say."""
        check_param_shapes(self.param_shapes(step), abstract_params, f"{self.directory / str(step)}")
        args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params),
                                  opt_state=ocp.args.StandardRestore(abstract_opt_state), meta=ocp.args.JsonRestore())
        try:
            out = self.manager.restore(step, args=args)
        except Exception as e:  # Orbax and tensorstore raise plain Exceptions on damaged files
            raise corrupt(self.directory / str(step), e) from None
        return out["params"], out["opt_state"], out["meta"]

    def param_shapes(self, step: int) -> dict:
        """{path: shape} of the saved params, read from Orbax metadata (no arrays loaded)."""
        return saved_param_shapes(self.directory / str(step) / "params")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def abandon(self) -> None:
        """After a failure: end the manager without raising again, and remove unfinished saves."""
        import shutil

        try:
            self.close()
        except Exception:  # the save that failed reports again here
            pass
        for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _layer_chunked(params):
    """Save args storing each stacked layer-group leaf one layer per chunk (see params_io), so that
    `jaxlm convert to-hf` can read a run's checkpoint layer by layer."""
    from jaxlm.checkpoint.params_io import key_names, stacked

    def args(path, x):
        return ocp.SaveArgs(shard_axes=(0,)) if stacked(key_names(path)) else ocp.SaveArgs()

    return jax.tree_util.tree_map_with_path(args, params)


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
