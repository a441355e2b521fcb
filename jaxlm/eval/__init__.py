"""lm-evaluation-harness for jaxlm models (the optional extra: `pip install -e ".[eval]"`).

Importing this package registers the `jaxlm` model with lm-eval (harness.JaxlmLM); `tasks.py`
runs tasks for `jaxlm eval --tasks`, and `quiet.py` keeps lm-eval's progress bars and git's complaints
off its stderr when it fails; `python -m jaxlm.eval ...` is lm-eval's own command line with `jaxlm`
registered. lm-eval is never a core dependency: without it this package raises JaxlmError.
"""

try:
    import lm_eval  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    from jaxlm.errors import JaxlmError

    raise JaxlmError("lm-evaluation-harness is not installed; install the extra: pip install -e \".[eval]\" "
                     "(or pip install lm-eval)") from None

from jaxlm.eval.harness import JaxlmLM

__all__ = ["JaxlmLM"]
