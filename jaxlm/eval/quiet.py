"""Keeping lm-eval's noise off stderr for `jaxlm eval --tasks`: its progress bars and log lines, and
the `fatal: not a git repository` that `git describe` prints when lm-eval records a commit hash
(`lm_eval.evaluator.get_git_commit_hash`) outside a repository."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
    """Hold what is written to stderr in the block (file descriptor 2: Python, lm-eval's logs, programs it
    runs): written out after it succeeds, dropped when it fails, whose one-line error says what matters.
    On a terminal nothing is held, so progress bars stay live."""
    if sys.stderr.isatty():
        yield
        return
    with tempfile.TemporaryFile() as held:
        with _stderr_to(held.fileno()):
            yield
        held.seek(0)
        sys.stderr.flush()
        os.write(2, held.read())


@contextlib.contextmanager
def quiet_git() -> Iterator[None]:
    """lm-eval's commit-hash lookup with git's own stderr sent to /dev/null."""
    from lm_eval import evaluator  # lazy: optional dependency (the eval extra)

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:  # another lm-eval version: nothing to quiet
        yield
        return

    def quiet():
        with open(os.devnull, "wb") as null, _stderr_to(null.fileno()):
            return original()

    evaluator.get_git_commit_hash = quiet
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


@contextlib.contextmanager
def _stderr_to(fd: int) -> Iterator[None]:
    """File descriptor 2 pointed at `fd` in the block (Python's buffered stderr flushed at both ends)."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
