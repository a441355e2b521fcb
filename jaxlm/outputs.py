"""Every file and folder jaxlm writes goes through here: checked first, written to a temporary
sibling, renamed into place when complete.

    with output_path(out, overwrite=args.overwrite, inputs=[ckpt]) as tmp:   # a folder
        ... write into tmp ...
    write_file(path, data)                                                    # one small file

- An output that is, contains or lies inside one of the command's inputs is refused, whatever
  the flags (replacing it would delete the input). An existing output is refused unless
  `overwrite`.
- The temporary is `.<name>.tmp-<pid>`; it is removed on any failure (a full disk becomes one
  `no space left on ...` error) and, when its process was killed (kill -9), by the next writer
  of the same output. The previous output is moved to `.<name>.old-<pid>` only for the two renames
  that replace it, and put back by the next writer if the process died between them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from jaxlm.errors import JaxlmError, disk_full, is_disk_full

_TEMP = re.compile(r"^\.?(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def check_output(out: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = (),
                 folder: bool = True) -> Path:
    """The absolute output path, after refusing an output that overlaps an input or already exists."""
    if not str(out).strip():  # "" would be the current folder
        raise JaxlmError("the output path is empty; give the file or folder to write")
    out = Path(os.path.abspath(out))
    clean_stale(out)  # first: a previous output displaced by a killed writer is back before the checks
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise JaxlmError(f"cannot write {out}: {blocker} is a file, not a folder; choose another path")
    refuse_overlap(out, inputs)
    _probe_writable(out)
    if out.exists():
        if folder and not out.is_dir():
            raise JaxlmError(f"output {out} exists and is not a directory; choose another path")
        if not folder and out.is_dir():
            raise JaxlmError(f"output {out} is a directory; choose a file path")
        if not overwrite and not (folder and not any(out.iterdir())):
            what = "exists and is not empty" if folder else "already exists"
            raise JaxlmError(f"output {out} {what}; choose another path or pass --overwrite")
    return out


def _probe_writable(out: Path) -> None:
    """Create (and drop) a nameless file where `out` will be written, so that a folder that cannot be written
    (permissions, a read-only filesystem) fails now, before the work that makes the output."""
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(out) from None
        raise JaxlmError(f"cannot write {out}: {folder} is not writable ({e.strerror}); check its permissions or "
                         f"choose another path") from None


def refuse_overlap(out: str | Path, inputs: Iterable[str | Path], what: str = "output") -> None:
    """JaxlmError when `out` is, contains or lies inside one of `inputs` (symlinks resolved)."""
    real = Path(out).resolve()
    for inp in inputs:
        src = Path(inp).resolve()
        if real == src or real in src.parents or src in real.parents:
            relation = "is" if real == src else "contains" if real in src.parents else "lies inside"
            raise JaxlmError(f"{what} {out} {relation} the input {inp}; writing it would destroy the input, "
                             f"so choose an output path outside it")


@contextlib.contextmanager
def output_path(out: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = (),
                folder: bool = True, checked: bool = False) -> Iterator[Path]:
    """Yield a temporary path (a created folder, or a file path to create) that becomes `out` when
    the block completes. `checked`: the caller ran `check_output` already."""
    out = Path(os.path.abspath(out)) if checked else check_output(out, overwrite=overwrite, inputs=inputs,
                                                                    folder=folder)
    created, tmp = _missing_parents(out), temp_path(out, "tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        if folder:
            tmp.mkdir()
        yield tmp
        _publish(tmp, out)
    except BaseException as e:
        _remove(tmp, settle=0.5)
        for d in created:  # folders made for this output, innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        if is_disk_full(e):
            raise disk_full(out) from None
        raise


def write_file(path: str | Path, data: str | bytes) -> Path:
    """Write one file atomically (replacing an existing one: callers decide whether that is allowed)."""
    with output_path(path, overwrite=True, folder=False) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(os.path.abspath(path))


def temp_path(out: Path, kind: str = "tmp") -> Path:
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}")


def clean_stale(out: Path) -> None:
    """Remove the temporaries of `out` left by dead processes; restore a displaced previous output."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    for p in out.parent.iterdir():
        m = _TEMP.match(p.name)
        if not m or m["name"] != out.name or _alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not out.exists():
            os.replace(p, out)  # died between the two renames: the previous output comes back
        else:
            _remove(p)


def _publish(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = temp_path(out, "old")
    _remove(old)
    os.replace(out, old)
    os.replace(tmp, out)
    _remove(old)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a temporary of ours from an earlier attempt in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _missing_parents(out: Path) -> list[Path]:
    missing, p = [], out.parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    return missing


def _remove(p: Path, settle: float = 0.0) -> None:
    """Remove a file or folder. settle: after a failure, a library's writer threads (Orbax, tensorstore)
    may still be finishing files in the folder, or recreate it: keep removing until it stayed gone for
    that many seconds."""
    if p.is_dir() and not p.is_symlink():
        gone_since = None
        for _ in range(60):  # at most 3 s
            shutil.rmtree(p, ignore_errors=True)
            if p.exists():
                gone_since = None
            else:
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since >= settle:
                    break
            time.sleep(0.05)
    elif p.exists() or p.is_symlink():
        with contextlib.suppress(OSError):
            p.unlink()
