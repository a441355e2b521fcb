"""`python -m jaxlm.eval --model jaxlm --model_args path=DIR --tasks ...`: lm-eval's own command
line (every flag of `lm_eval`), with the `jaxlm` model registered first."""

import jaxlm.eval  # noqa: F401  (registers "jaxlm")
from lm_eval.__main__ import cli_evaluate

if __name__ == "__main__":
    cli_evaluate()
