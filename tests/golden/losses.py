"""Golden numbers: the first 20 training losses of tiny_uniform (seed 0, CPU, float32) on the bundled corpus.

Every other training test compares one path with another (meshes, buckets, resume), so a change that moves
every path alike (init, the schedule, z-loss, a loss reduction) is invisible to them. These pinned losses
are not. When such a change is intended, regenerate them and say why in the commit:

    JAX_PLATFORMS=cpu python tests/golden/losses.py        # rewrites tests/golden/tiny_uniform_losses.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).with_name("tiny_uniform_losses.json")
STEPS = 20
# The run: tiny_uniform as shipped, in float32 with the XLA reference kernels, on the default data (the
# bundled plays). Warm-up ends inside the 20 steps and z-loss is on, so both show in the losses.
OVERRIDES = [f"train.steps={STEPS}", "train.batch_size=4", "train.seq_len=64", "train.log_every=1",
             "train.warmup_steps=8", "train.lr=3e-3", "train.z_loss=1e-4", "train.eval_every=0",
             "train.sample_prompt=", "checkpoint.every=0", "checkpoint.async_save=false", "seed=0",
             "model.param_dtype=float32", "model.compute_dtype=float32", "model.attention_impl=xla",
             "model.norm_impl=xla", "mesh.data=1", "train.compile_cache=off"]


def run_losses(out_dir: Path, extra: list[str] = ()) -> list[float]:
    """Train the golden run into out_dir (one CPU device) and return its losses, steps 1..STEPS."""
    import jax

    from jaxlm.config import load_run_config
    from jaxlm.training.trainer import train

    sets = [*OVERRIDES, f"train.out_dir={out_dir}", *extra]
    run_cfg = load_run_config("tiny_uniform", sets)
    result = train(run_cfg, quiet=True, devices=jax.devices()[:1])
    return [result.losses[s] for s in range(1, STEPS + 1)]


def main() -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        losses = run_losses(Path(tmp) / "run")
    GOLDEN.write_text(json.dumps({"config": "tiny_uniform", "overrides": OVERRIDES, "losses": losses}, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {', '.join(f'{x:.4f}' for x in losses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
