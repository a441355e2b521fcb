"""User-facing errors.

Anything raised as `JaxlmError` is a problem with the user's input (a config, a path, a
checkpoint). The CLI prints it as one line and exits with status 2, with no traceback.
Programming errors stay ordinary exceptions so that they keep their tracebacks.
"""


class JaxlmError(Exception):
    """A bad input that the user can fix; the message names the problem and the fix."""


class ConfigError(JaxlmError):
    """An invalid configuration value, key or file."""
