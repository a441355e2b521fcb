"""The run's persistent compilation cache: a restarted or resumed run loads its compiled train step
(and any other program that took a while to compile) from disk instead of compiling it again.

`train.compile_cache`: "auto" (default) is `<out_dir>/compile_cache`, unless JAX already has a cache
directory (JAX_COMPILATION_CACHE_DIR, or jax.config set by the caller), which is then used as it is;
"off" disables it for the run; any other value is the directory. JAX's own cache does the work: an
entry's key covers the program, the devices, the jax/XLA versions and the flags, so a changed model,
mesh or jax version compiles anew; only process 0 writes (a multi-host run reads it back on every
host when the run dir is on a shared filesystem, as checkpoints need anyway); only programs that took
at least jax_persistent_cache_min_compile_time_secs (1 s by default) are stored.

The cache directory is trusted: whoever can write to it can make the run execute their code, so it
belongs in the user's own run dir, not in a shared writable place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path

import jax
import jax.monitoring
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from jaxlm.errors import ConfigError
from jaxlm.training.run_lock import LOCK_NAME

DIR_NAME = "compile_cache"
_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CacheUse:
    """What the cache did while it was active."""

    directory: str | None  # None: no persistent cache for this run
    hits: int = 0  # programs loaded from it


def resolve(setting: str, out_dir: Path) -> str | None:
    """The directory for `train.compile_cache` (None: no persistent cache)."""
    if setting == "off" or not jax.config.jax_enable_compilation_cache:
        return None
    if setting == "auto":
        return jax.config.jax_compilation_cache_dir or str(out_dir / DIR_NAME)
    return setting


@contextlib.contextmanager
def active(setting: str, out_dir: Path):
    """Use the run's cache inside the block (yields a CacheUse); JAX's previous setting is put back."""
    previous = jax.config.jax_compilation_cache_dir
    use = CacheUse(resolve(setting, out_dir))
    if use.directory is not None:  # JAX would only warn on every read and write, and cache nothing
        d = Path(use.directory).absolute()
        blocker = next((p for p in (d, *d.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ConfigError(f"train.compile_cache {use.directory} cannot be a directory: {blocker} is a file; "
                              f"give a directory, \"auto\" or \"off\"")

    def on_event(event: str, **_):
        if event == _HIT:
            use.hits += 1

    changed = use.directory != previous  # "off" under JAX_COMPILATION_CACHE_DIR: None for the run
    if changed:
        jax.config.update("jax_compilation_cache_dir", use.directory)
        jax_cache.reset_cache()  # JAX decides once per process whether a cache is used: decide again
    jax.monitoring.register_event_listener(on_event)
    try:
        yield use
    finally:
        jax.monitoring.unregister_event_listener(on_event)
        if changed:
            jax.config.update("jax_compilation_cache_dir", previous)
            jax_cache.reset_cache()
        _drop_if_alone(out_dir, use.directory)


def _drop_if_alone(out_dir: Path, directory: str | None) -> None:
    """A run that stopped before writing its files (config.yaml first) leaves no run dir: its own
    cache goes too, so that the run lock can remove the directory it created."""
    cache = out_dir / DIR_NAME
    if directory != str(cache) or jax.process_index() != 0 or not cache.is_dir():
        return
    if {p.name for p in out_dir.iterdir()} <= {DIR_NAME, LOCK_NAME}:
        shutil.rmtree(cache, ignore_errors=True)
