"""Shared by the training tests: a tiny run config and a deterministic in-memory batch source."""

from __future__ import annotations

import numpy as np

from jaxlm.config import from_dict
from jaxlm.config.run import RunConfig

TINY_MODEL = dict(name="tiny_test", vocab_size=256, model_dim=64, num_layers=2, head_dim=16, num_query_heads=4,
                  num_kv_heads=2, ffn_dim=128, max_context=64, param_dtype="float32", compute_dtype="float32",
                  attention_impl="xla", norm_impl="xla")


def tiny_run_config(out_dir, steps=5, mesh=(-1, 1, 1), checkpoint=None, model=None, **train) -> RunConfig:
    data = {"model": {**TINY_MODEL, **(model or {})}, "seed": 0,
            "train": {"steps": steps, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "warmup_steps": 2,
                      "log_every": 1, "out_dir": str(out_dir), "sample_prompt": "", **train},
            "checkpoint": {"every": 2, "keep": 2, "keep_best": 1, "async_save": True, **(checkpoint or {})},
            "mesh": {"data": mesh[0], "fsdp": mesh[1], "tensor": mesh[2]}}
    return from_dict(RunConfig, data)


class TokenBatches:
    """Batches of a fixed random token stream (a stand-in for jaxlm.data with the same interface).

    Batch i, row r of process p is window (i * batch_size * process_count + p * batch_size + r) of the
    stream, so the processes' rows together equal a single process's global batch.
    """

    def __init__(self, process_index=0, process_count=1, batch_size=8, seq_len=32, vocab=256, seed=0):
        self.tokens = np.random.default_rng(seed).integers(3, vocab, size=100_000, dtype=np.int32)
        self.p, self.n, self.b, self.t = process_index, process_count, batch_size, seq_len
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        rows = []
        for r in range(self.b):
            w = (self.index * self.b * self.n + self.p * self.b + r) % (len(self.tokens) // (self.t + 1))
            rows.append(self.tokens[w * (self.t + 1):(w + 1) * (self.t + 1)])
        self.index += 1
        x = np.stack(rows)
        return {"inputs": x[:, :-1], "targets": x[:, 1:], "segment_ids": np.ones_like(x[:, :-1]),
                "positions": np.broadcast_to(np.arange(self.t, dtype=np.int32), (self.b, self.t)).copy(),
                "loss_mask": np.ones(x[:, :-1].shape, np.float32)}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


def token_batches(process_index, process_count, batch_size):
    return TokenBatches(process_index, process_count, batch_size)


def eval_batches(process_index, process_count, batch_size):
    """A validation pass: 3 batches of another stream (each process its rows of every global batch)."""
    import itertools

    return itertools.islice(TokenBatches(process_index, process_count, batch_size, seed=7), 3)


class SlowBatches(TokenBatches):
    """TokenBatches that take `seconds` each, so that a test can signal a run while it steps."""

    def __init__(self, seconds: float, *args):
        super().__init__(*args)
        self.seconds = seconds

    def __next__(self):
        import time

        time.sleep(self.seconds)
        return super().__next__()


def main(argv) -> None:
    """`python tests/train_helpers.py OUT_DIR STEPS DATA,FSDP,TENSOR [key=value ...]`: a tiny run in a subprocess.

    Used by the kill -9, signal, lock and multi-process tests (environment: XLA_FLAGS, JAX_* from the
    caller). Test knobs from the environment: SLOW_BATCHES=seconds per batch; HIDE_NEWEST_ON=process
    index whose listing of finished checkpoints leaves out the newest (as a lagging shared filesystem).
    Prints "LOSSES {json}", "VAL {json}" (validation losses) and "STOPPED step reason" on stdout.
    """
    import json
    import os

    from jaxlm.config.loader import parse_overrides
    from jaxlm.parallel import distributed

    distributed.maybe_initialize()
    import jax

    from jaxlm.training import trainer

    if os.environ.get("HIDE_NEWEST_ON") == str(jax.process_index()):
        listing = trainer.finished_steps
        trainer.finished_steps = lambda d: listing(d)[:-1]
    slow = float(os.environ.get("SLOW_BATCHES", "0"))
    source = (lambda p, n, b: SlowBatches(slow, p, n, b)) if slow else token_batches

    out, steps, mesh = argv[0], int(argv[1]), tuple(int(x) for x in argv[2].split(","))
    extra = parse_overrides(argv[3:])
    cfg = tiny_run_config(out, steps=steps, mesh=mesh, checkpoint=extra.get("checkpoint"), **extra.get("train", {}))
    result = trainer.train(cfg, batch_source=source, eval_source=eval_batches, quiet=True)
    print("LOSSES " + json.dumps({str(k): v for k, v in result.losses.items()}), flush=True)
    print("VAL " + json.dumps({str(k): v for k, v in result.val_losses.items()}), flush=True)
    print(f"STOPPED {result.step} {result.stopped}", flush=True)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
