"""Run jaxlm CLI commands one after another in this one process (`jaxlm.cli.main.main`), for
test_readme: python readme_runner.py < commands.json, in the directory the commands run in.

stdin: a JSON list of {"argv": [...], "stdin": str | null, "make_lora": [run_dir, out] | null}.
stdout: one JSON line per command: {"argv", "rc", "s" (seconds), "stderr"}; it stops at the first failure.
One process shares the imports, JAX's start-up and compiled programs between the commands; what
each command prints still goes through the CLI's own code path, with tracebacks kept (JAXLM_DEBUG).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback


def make_lora(run: str, out: str) -> None:
    """A LoRA model dir (rank-4 adapters, untrained) from a run, for `jaxlm lora merge`."""
    import dataclasses

    from jaxlm.checkpoint import load_model, save_model
    from jaxlm.lora.config import LoraConfig
    from jaxlm.checkpoint.model_dir import tokenizer_files
    from jaxlm.variants import model_for

    run_cfg, model = load_model(run)
    cfg = dataclasses.replace(run_cfg, lora=LoraConfig(enabled=True, rank=4))
    save_model(out, cfg, model_for(cfg.model, cfg.quant, cfg.lora, base=model), extra_files=tokenizer_files(run))


def main() -> int:
    from jaxlm.cli.main import main as jaxlm_main

    os.environ["JAXLM_DEBUG"] = "1"  # an unexpected exception keeps its traceback
    real_stdout = sys.stdout
    for cmd in json.load(sys.stdin):
        if cmd.get("make_lora"):
            make_lora(*cmd["make_lora"])
        err = io.StringIO()
        t0 = time.perf_counter()
        sys.stdin = io.StringIO(cmd.get("stdin") or "")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                rc = jaxlm_main(cmd["argv"])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 1
        print(json.dumps({"argv": cmd["argv"], "rc": rc, "s": round(time.perf_counter() - t0, 1),
                          "stderr": err.getvalue()[-3000:]}), file=real_stdout,
              flush=True)
        if rc:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
