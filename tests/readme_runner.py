"""Run the README's commands one after another in this one process, for test_readme:
python readme_runner.py < commands.json, in the directory the commands run in.

stdin: a JSON list of {"program": "jaxlm", "argv": [...], "stdin": str | null} (`jaxlm.cli.main.main`),
{"program": "lm_eval", "argv": [...]} (`python -m jaxlm.eval`) or {"program": "python", "code": str}
(a README snippet, exec'd).
stdout: one JSON line per command: {"program", "argv", "rc", "s" (seconds), "stdout", "stderr"}; it stops
at the first failure.
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


def run_one(cmd: dict) -> int:
    """Run one command; its exit status (lm-eval's command line ends with SystemExit too)."""
    if cmd["program"] == "python":
        exec(compile(cmd["code"], "<README snippet>", "exec"), {})
        return 0
    if cmd["program"] == "lm_eval":
        from jaxlm.eval.__main__ import main as lm_eval_main

        lm_eval_main(cmd["argv"])
        return 0
    from jaxlm.cli.main import main as jaxlm_main

    return jaxlm_main(cmd["argv"])


def main() -> int:
    os.environ["JAXLM_DEBUG"] = "1"  # an unexpected exception keeps its traceback
    real_stdout = sys.stdout
    for cmd in json.load(sys.stdin):
        out, err = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        sys.stdin = io.StringIO(cmd.get("stdin") or "")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = run_one(cmd)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
                rc = 1
        print(json.dumps({"program": cmd["program"], "argv": cmd.get("argv", []), "rc": rc,
                          "s": round(time.perf_counter() - t0, 1), "stdout": out.getvalue()[-3000:],
                          "stderr": err.getvalue()[-3000:]}), file=real_stdout, flush=True)
        if rc:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
