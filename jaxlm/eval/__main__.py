"""`python -m jaxlm.eval --model jaxlm --model_args path=DIR --tasks ...`: lm-eval's own command
line (every flag of `lm_eval`), with the `jaxlm` model registered first. `--include_path` takes
`bundled:eval` and works from any folder (jaxlm.eval.tasks.portable_include_path)."""

import sys

from lm_eval.__main__ import cli_evaluate

import jaxlm.eval  # noqa: F401  (registers "jaxlm")
from jaxlm.eval.quiet import quiet_git
from jaxlm.eval.tasks import portable_include_path


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's command line on argv (default: sys.argv[1:])."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flag = next((f for f in ("--include_path", "--include-path") if f in argv), None)
    include = argv[argv.index(flag) + 1] if flag and argv.index(flag) + 1 < len(argv) else None
    with portable_include_path(include) as portable, quiet_git():  # no `fatal: not a git repository`
        if portable is not None:
            argv[argv.index(flag) + 1] = portable
        sys.argv = [sys.argv[0]] + argv
        cli_evaluate()


if __name__ == "__main__":
    main()
