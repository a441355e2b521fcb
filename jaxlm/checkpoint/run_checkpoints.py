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

import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxlm.checkpoint.metadata import check_param_shapes, corrupt, saved_param_shapes
from jaxlm.model.layouts import is_layer_stack, key_names

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
        try:
            self.close()
        except Exception:  # the save that failed reports again here
            pass
        for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _layer_chunked(params):
    """Save args storing each stacked layer-group leaf one layer per chunk (see params_io), so that
    `jaxlm convert to-hf` can read a run's checkpoint layer by layer."""
    def args(path, x):
        return ocp.SaveArgs(shard_axes=(0,)) if is_layer_stack(key_names(path)) else ocp.SaveArgs()

    return jax.tree_util.tree_map_with_path(args, params)
