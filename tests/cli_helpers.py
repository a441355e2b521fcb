"""Running the real `jaxlm` command in subprocesses, and the small fixtures those tests share.

`jaxlm(...)` runs `python -m jaxlm.cli.main` (the console script's code path) on one CPU device.
`tree_digest` hashes every file under some roots, so a test can assert that nothing it did not
mean to write changed. `built_once` builds a fixture folder once per test session, shared by
the pytest-xdist workers (the first builds it under a lock, the others wait and reuse it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_YAML = REPO / "jaxlm" / "configs" / "default.yaml"


# LLVM's optimisation level for XLA:CPU in tests: the tests' programs are tiny, so compiling them
# is most of the suite's time, and -O0 code generation compiles about 1.6x faster. It changes how
# XLA's kernels are compiled, not what the programs compute (HLO passes are unaffected).
FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int = 1) -> str:
    """XLA_FLAGS for a test process: `devices` virtual CPU devices, fast compilation."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(1)  # one CPU device: the conftest's 8 virtual devices are for mesh tests
    env.pop("JAXLM_DEBUG", None)
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
    return env


def jaxlm(*args, cwd=None, stdin: str | None = None, timeout: int = 300, exe=None, env=None):
    """Run `jaxlm ARGS...`; returns the CompletedProcess (text stdout / stderr)."""
    cmd = [exe] if exe else [sys.executable, "-m", "jaxlm.cli.main"]
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=timeout, env=env or cli_env())


def tree_digest(*roots: Path) -> dict[str, str]:
    """{path: sha256 (or 'dir' / 'link -> target')} of everything under `roots`."""
    out = {}
    for root in roots:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            continue
        for p in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            if p.is_symlink():
                out[str(p)] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[str(p)] = "dir"
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def tiny_run_yaml(path: Path, out_dir: Path, **train) -> Path:
    """A 2-layer, 128-wide default run (seconds to compile), 2 steps, a checkpoint after each."""
    import yaml

    train_cfg = dict(steps=2, batch_size=2, seq_len=32, log_every=1, warmup_steps=1, out_dir=str(out_dir),
                     sample_prompt="")
    train_cfg.update(train)
    cfg = {"inherit": str(DEFAULT_YAML), "model": {"num_layers": 2, "model_dim": 128}, "train": train_cfg,
           "checkpoint": {"every": 1, "keep": 2, "keep_best": 0}, "mesh": {"data": 1}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def shared_root(tmp_path_factory) -> Path:
    """A folder all xdist workers of this session see (one per session: keyed by the run id)."""
    base = tmp_path_factory.getbasetemp()
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    root = base.parent / f"shared-{uid}" if uid else base / "shared"
    root.mkdir(parents=True, exist_ok=True)
    return root


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(path)` once per session under a lock; later callers (any worker) get the same path."""
    root = shared_root(tmp_path_factory)
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                build(path)
                done.write_text("ok")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m", free: int | None = None):
    """A tmpfs of `size` mounted at `path` (root only), optionally filled to leave `free` bytes;
    unmounted afterwards. Raises PermissionError where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise PermissionError("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode:
        raise PermissionError(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        if free is not None:
            st = os.statvfs(path)
            avail = st.f_bavail * st.f_frsize
            with open(path / ".filler", "wb") as f:
                f.write(b"\0" * max(avail - free, 0))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
