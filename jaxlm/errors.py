"""User-facing errors, and the one mapping from any failure to a one-line message.

Anything raised as `JaxlmError` is a problem with the user's input (a config, a path, a
checkpoint). The CLI prints it as one line and exits with status 2, with no traceback.
Failures raised by libraries on bad input (OSError, a full disk, malformed JSON / YAML,
a corrupt safetensors or Orbax file) are mapped to one line too (`user_message`).
`JAXLM_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import errno
import json
import os
import re
import reprlib
import sys
import traceback
from pathlib import Path

# Libraries whose exceptions on a bad file are plain `Exception`s (Orbax) or their own types.
LIBRARIES = ("/orbax/", "/tensorstore/", "/safetensors/")


class JaxlmError(Exception):
    """A bad input that the user can fix; the message names the problem and the fix."""


class ConfigError(JaxlmError):
    """An invalid configuration value, key or file."""


class ArgumentTypeError(JaxlmError, TypeError):
    """A Python API argument of the wrong type (jaxlm.inference.checks: one rule per argument)."""


class ArgumentValueError(JaxlmError, ValueError):
    """A Python API argument of the right type outside its allowed values."""


def debug() -> bool:
    return os.environ.get("JAXLM_DEBUG", "") not in ("", "0")


def device_of(path: str | Path) -> str:
    """'tmpfs /mnt/x' for the filesystem holding `path` (its mount point from /proc/mounts)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if mnt == str(p):
                return f"{dev} ({fstype} at {mnt})"
    except OSError:
        pass
    return str(p)


def is_disk_full(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain (Orbax and tensorstore wrap it in their own errors)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full(path: str | Path) -> JaxlmError:
    return JaxlmError(f"no space left on {device_of(path)} while writing {path}; free some space or write the "
                      f"output elsewhere (nothing was changed)")


def os_message(e: OSError, path: str | Path | None = None) -> str:
    """One line for an OSError, naming the file."""
    where = e.filename or path
    if e.errno == errno.ENOSPC:
        return str(disk_full(where or "the output"))
    reason = e.strerror or str(e)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write or read {where}: {reason}; check its permissions or choose another path"
    return f"{where or 'a file'}: {reason}; check the path"


def user_message(e: BaseException) -> str | None:
    """The one-line message for a failure caused by bad input, or None for a programming error."""
    # lazy: yaml only classifies a failure; `import jaxlm.errors` (imported everywhere) stays light
    import yaml

    if isinstance(e, JaxlmError):
        return str(e)
    if isinstance(e, OSError):
        return os_message(e)
    if is_disk_full(e):
        return f"no space left on the device while writing ({_first_line(e)}); free some space or write elsewhere"
    if is_out_of_memory(e):
        return out_of_memory_message(e)
    if isinstance(e, (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError)):
        return f"unreadable input ({type(e).__name__}: {_first_line(e)}); fix or replace that file"
    name = type(e).__name__
    if isinstance(e, RuntimeError) and str(e).startswith("Unable to initialize backend"):
        return (f"JAX could not start its accelerator backend ({_first_line(e)}); check JAX_PLATFORMS and that no "
                f"other process holds the device")
    frames = traceback.extract_tb(e.__traceback__)
    if name == "SafetensorError" or any(lib in f.filename for f in frames for lib in LIBRARIES):
        return (f"a checkpoint file could not be read ({name}: {_first_line(e)}); it is corrupt or incomplete: "
                f"replace it or point to another checkpoint")
    return None


def is_out_of_memory(e: BaseException) -> bool:
    """MemoryError, or XLA's RESOURCE_EXHAUSTED / "Out of memory" (XlaRuntimeError / JaxRuntimeError)."""
    text = str(e)
    return isinstance(e, MemoryError) or (type(e).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and (
        "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()))


def out_of_memory_message(e: BaseException) -> str:
    """Out of memory is the user's to fix: what was asked, what there is, and the settings to lower."""
    asked = re.search(r"allocat\w* (\d+) bytes", str(e))
    asked = f"{int(asked[1]) / 2 ** 30:.2f} GiB asked for" if asked else _first_line(e)
    return (f"out of memory ({asked}; {_memory_available()}); lower the batch (train.batch_size or --batch-size, "
            f"or raise train.micro_batches), the sequence length (train.seq_len) or the model (model.model_dim, "
            f"model.num_layers), or set model.remat=full")


def _memory_available() -> str:
    """The first device's memory where JAX reports it (GPU, TPU), else the host's RAM (CPU)."""
    jax = sys.modules.get("jax")  # only when already loaded: a message never starts a backend
    try:
        limit = ((jax.devices()[0].memory_stats() or {}) if jax else {}).get("bytes_limit")
    except Exception:  # no backend after all: fall back to the host
        limit = None
    if limit:
        return f"{limit / 2 ** 30:.1f} GiB per device"
    return f"this host has {host_ram_bytes() / 2 ** 30:.1f} GiB of RAM"


def host_ram_bytes() -> int:
    """Physical memory of this host."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_limit(device) -> int | None:
    """Bytes one JAX device can hold: the host's RAM for a CPU device (its devices share it), else what
    JAX reports for the device (None where it reports nothing)."""
    if device.platform == "cpu":
        return host_ram_bytes()
    return (device.memory_stats() or {}).get("bytes_limit") or None


def short_repr(value, limit: int = 80) -> str:
    """repr(value) for a message, cut short in bounded time: a huge or deeply nested value (a YAML alias
    bomb, a giant list passed as an argument) must not hang the error that names it."""
    r = reprlib.Repr()
    r.maxlevel, r.maxtuple, r.maxlist, r.maxarray, r.maxdict, r.maxset, r.maxfrozenset, r.maxdeque = 3, *[6] * 7
    r.maxstring = r.maxlong = r.maxother = limit
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:240] if text else type(e).__name__
