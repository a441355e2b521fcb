"""`jaxlm train [CONFIG] [--set key=value ...]`: pretrain or fine-tune; resumes when out_dir has checkpoints.

With no CONFIG it runs configs/default.yaml: the tiny layerwise model on the bundled Shakespeare
corpus for a few minutes on CPU, then prints a short sample. Multi-host: run the same command on
every host (see docs/training.md); jax.distributed starts from the environment.
"""

from __future__ import annotations

from jaxlm import host_malloc
from jaxlm.cli.common import add_config_args, start_backend
from jaxlm.config import load_run_config

DEFAULT_CONFIG = "default"


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: a tiny model on the bundled corpus, a few minutes)")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # a bad config fails before JAX loads
    run_cfg = load_run_config(args.config, args.overrides, default=DEFAULT_CONFIG)

    # lazy: after the config is read, so a bad config fails before JAX loads (and `jaxlm --help` stays fast)
    from jaxlm.parallel import distributed

    host_malloc.tune()  # before jax.distributed's threads allocate (see jaxlm.host_malloc)
    distributed.maybe_initialize()  # before anything touches the devices
    start_backend()

    # lazy: as above
    import jax

    from jaxlm.training.trainer import train

    result = train(run_cfg)
    if jax.process_index() == 0:
        print(f"run dir: {result.run_dir} (step {result.step}, {result.stopped})")
        tc = run_cfg.train
        if result.stopped == "finished" and tc.sample_prompt:
            print_sample(result.run_dir, tc.sample_prompt, tc.sample_tokens, run_cfg.seed)
    return 0


def print_sample(run_dir, prompt: str, max_new_tokens: int, seed: int) -> None:
    """Sample from the saved checkpoint (so this also checks that it loads)."""
    from jaxlm.inference.api import load  # lazy: keeps `jaxlm --help` fast (jaxlm.inference loads JAX)

    lm = load(run_dir)
    text = lm.generate(prompt, max_new_tokens, temperature=0.8, top_k=40, seed=seed)
    print(f"sample (temperature 0.8, top-k 40):\n{prompt}{text}")
