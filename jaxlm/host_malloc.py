"""Keep XLA:CPU's per-execution scratch memory mapped between calls (glibc hosts).

XLA:CPU allocates one block of temporaries per execution of a program (427 MB for the
tiny_uniform train step at batch 16 x 128) from the pool thread that runs it. glibc serves a
request that large from a thread's own arena with a fresh `mmap`, and `free` unmaps it, so every
step faults in all of it again: 105,000 page faults and about 220 ms of kernel time per step
there, a third of the step. With one arena, no mmap for large blocks and no trimming, the block
is reused from the heap and the faults go away (docs/training.md, "Speed against PyTorch").

`tune()` sets exactly that through `mallopt`. It works only while the process has one thread
that has allocated: before JAX starts its CPU backend or jax.distributed its threads (each
thread picks its arena on its first allocation). So the CLI calls it before anything touches
JAX, and a notebook can call `jaxlm.host_malloc.tune()` first thing. It changes nothing when the process
will run on a GPU or TPU, when the C library is not glibc, when the user tuned malloc already
(`GLIBC_TUNABLES` with glibc.malloc, or a `MALLOC_*_` variable), or with `JAXLM_MALLOC_TUNING=0`.
The cost: memory freed by the process stays mapped (its peak), and all threads share one arena.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")

_applied = False


def skip_reason() -> str | None:
    """Why `tune()` would leave malloc alone in this process, or None if it applies."""
    if os.environ.get("JAXLM_MALLOC_TUNING", "1") == "0":
        return "JAXLM_MALLOC_TUNING=0"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not Linux with glibc"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ):
        return "malloc is tuned by the environment already"
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and platforms.split(",")[0].strip().lower() != "cpu":
        return f"JAX_PLATFORMS={platforms} selects an accelerator"
    if not platforms and any(glob.glob(p) for p in _ACCELERATOR_DEVICES):
        return "a GPU or TPU device is present"
    return None


def tune() -> bool:
    """Apply the settings above (once per process); True if they are in effect."""
    global _applied
    if _applied:
        return True
    if skip_reason() is not None:
        return False
    libc = ctypes.CDLL(None)
    ok = all(libc.mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
    _applied = ok
    return ok


def applied() -> bool:
    """Whether `tune()` has set the malloc options in this process."""
    return _applied
