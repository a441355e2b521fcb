"""One trainer per run directory: RUN_DIR/train.lock.

The trainer holds an exclusive `flock` on the file while it runs, and writes its PID, host and
start time into it for the message a second trainer gets: "run dir ... in use by PID N on HOST".
The kernel drops a flock when its process dies, kill -9 included, so a lock left by a dead trainer
is free and the next one takes it over (saying so). On release the file is removed. Filesystems
without flock (some network mounts) fall back to the record: a live PID on this host, or any record
from another host, holds the directory.

In a multi-process job process 0 takes the lock for the job and tells the others the outcome.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

import jax

from jaxlm.errors import JaxlmError
from jaxlm.parallel import distributed

LOCK_NAME = "train.lock"


class RunLock:
    def __init__(self, path: Path, fd: int, created_dir: bool, stale: dict | None):
        self.path, self.fd, self.created_dir, self.stale = path, fd, created_dir, stale

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        run_dir = Path(run_dir)
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            held = e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)  # else: no flock on this filesystem
            holder = _read(fd)
            if held or _alive(holder):
                os.close(fd)
                raise JaxlmError(f"run dir {run_dir} in use by {describe_holder(holder)} ({path}); wait for that run "
                                 f"to end or stop it, or choose another train.out_dir") from None
        stale = _read(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        os.fsync(fd)
        return cls(path, fd, created, stale)

    def release(self) -> None:
        """Remove the file (still holding the lock, so nobody takes a lock on a file that is going
        away), then the run dir too when this trainer created it and left nothing else in it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only if empty: a run that failed before writing leaves no dir
        os.close(self.fd)


@contextlib.contextmanager
def locked_run_dir(run_dir: Path):
    """Hold the run dir's lock for the body (process 0 for the job); yields the lock or None."""
    lock, error = None, ""
    if jax.process_index() == 0:
        try:
            lock = RunLock.acquire(run_dir)
        except JaxlmError as e:
            error = str(e)
    error = distributed.broadcast_json(error)
    if error:
        raise JaxlmError(error)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def _read(fd: int) -> dict | None:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _alive(holder: dict | None) -> bool:
    """Whether the record's trainer may still run (another host's: assume so)."""
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another trainer"
    return f"PID {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"
