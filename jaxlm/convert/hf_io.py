"""Hugging Face model folders on disk: config.json, safetensors read one tensor at a time,
and a streaming safetensors writer (sharded, with model.safetensors.index.json).

The safetensors library writes a file from a complete dict of tensors; to keep peak memory at one
tensor, `ShardedWriter` writes the (documented, simple) format itself: the header is built from
the planned names/shapes/dtypes, then each tensor's bytes go to their offset as they arrive.
Reading uses the library (`safe_open`, memory-mapped).
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import safe_open

from jaxlm.errors import JaxlmError

ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.float16): "F16",
             np.dtype(np.float64): "F64", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32"}
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def read_config(hf_dir: Path) -> dict:
    hf_dir = Path(hf_dir)
    if not hf_dir.exists():
        raise JaxlmError(f"{hf_dir} does not exist; give a Hugging Face model folder")
    if not hf_dir.is_dir():
        raise JaxlmError(f"{hf_dir} is not a directory; give a Hugging Face model folder")
    path = hf_dir / "config.json"
    if not path.is_file():
        raise JaxlmError(f"{hf_dir} has no config.json; give a Hugging Face model folder (save_pretrained output)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise JaxlmError(f"{path} is not valid JSON ({e}); restore the config.json saved with the weights") from None
    if not isinstance(config, dict):
        raise JaxlmError(f"{path} must hold a JSON object; restore the config.json saved with the weights")
    return config


@contextlib.contextmanager
def reading(path: Path, what: str = "safetensors weights file"):
    """A damaged weights file (SafetensorError, torch's errors, a bad index) -> one JaxlmError naming it."""
    if path.exists() and not path.is_file():  # opening a FIFO would block for ever
        raise JaxlmError(f"{path} is not a regular file (a FIFO, socket or device); give the {what} itself")
    try:
        yield
    except JaxlmError:
        raise
    except Exception as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise JaxlmError(f"{path} is not a readable {what} ({detail}); it is truncated or damaged: "
                         f"download or convert it again") from None


class HFReader:
    """Tensor names, shapes and values of an HF folder's weights, loaded one tensor at a time."""

    def __init__(self, hf_dir: Path, allow_pickle: bool = False):
        hf_dir = Path(hf_dir)
        self._torch: dict[str, object] | None = None
        st_files = sorted(hf_dir.glob("*.safetensors"))
        if (hf_dir / INDEX).is_file():
            with reading(hf_dir / INDEX, "shard index (JSON with a weight_map)"):
                weight_map = json.loads((hf_dir / INDEX).read_text())["weight_map"]
                self._where = {str(k): hf_dir / str(f) for k, f in weight_map.items()}
        elif st_files:
            self._where = {}
            for f in st_files:
                with self._open(f) as handle:
                    self._where.update((k, f) for k in handle.keys())
        else:
            pickles = sorted(p for p in hf_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if not pickles:
                raise JaxlmError(f"{hf_dir} holds no *.safetensors weights")
            if not allow_pickle:
                raise JaxlmError(f"{hf_dir} holds only pickle weights ({pickles[0].name}); pickles can run code when "
                                 f"loaded. Convert them to safetensors, or pass --allow-pickle to load them with "
                                 f"torch.load(weights_only=True)")
            self._torch = _load_pickles(pickles)
            self._where = {k: None for k in self._torch}
        missing = sorted({f for f in self._where.values() if f is not None and not f.is_file()})
        if missing:
            raise JaxlmError(f"{INDEX} names shard files that are missing: {', '.join(p.name for p in missing)}")

    @staticmethod
    @contextlib.contextmanager
    def _open(path: Path):
        """A fresh memory map per call: pages of tensors already converted are not kept mapped."""
        with reading(path), safe_open(str(path), framework="np") as f:
            yield f

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._torch is not None:
            return tuple(self._torch[name].shape)
        with self._open(self._where[name]) as f:
            return tuple(f.get_slice(name).get_shape())

    def dtype(self, name: str) -> np.dtype:
        if self._torch is not None:
            return _torch_to_numpy(self._torch[name].flatten()[:1]).dtype
        with self._open(self._where[name]) as f:
            code = f.get_slice(name).get_dtype()
        return {v: k for k, v in ST_DTYPES.items()}.get(code, np.dtype(np.float32))

    def get(self, name: str) -> np.ndarray:
        if self._torch is not None:
            return _torch_to_numpy(self._torch[name])
        with self._open(self._where[name]) as f:
            return f.get_tensor(name)


def _load_pickles(paths: list[Path]) -> dict:
    # lazy: optional dependency (the torch extra), only for .bin checkpoints
    import torch

    tensors = {}
    for p in paths:
        with reading(p, "pickle weights file"):  # a FIFO is refused, not opened
            pass
        try:
            loaded = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # weights_only refuses objects other than tensors (UnpicklingError)
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise JaxlmError(f"refused: {p} is not a plain tensor file ({detail}); convert a trusted copy to "
                             f"safetensors") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise JaxlmError(f"refused: {p} is not a plain tensor file (not a dict of tensors); convert a trusted "
                             f"copy to safetensors")
        tensors.update(loaded)
    return tensors


def _torch_to_numpy(t) -> np.ndarray:
    # lazy: optional dependency (the torch extra)
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a number of bytes -> bytes (at least 1; a JaxlmError otherwise)."""
    size = _size(text)
    if size is None or size < 1:
        raise JaxlmError(f"cannot use size {text!r}: write a positive size, e.g. 5GB or 500MB")
    return size


def _size(text: str | int) -> int | None:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if not isinstance(text, str):
        return None
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    s = text.strip().upper()
    for unit, mult in units.items():
        if s.endswith(unit) and s[: -len(unit)].strip():
            try:
                number = float(s[: -len(unit)]) * mult
            except ValueError:
                return None
            return int(number) if math.isfinite(number) else None  # inf / nan
    try:
        return int(s)
    except ValueError:
        return None


class ShardedWriter:
    """Write planned tensors into safetensors shards of at most `max_shard_bytes` (a single tensor
    larger than that gets a shard of its own), tensors arriving in any order, one at a time.

    entries: (name, shape, dtype) in file order.
    """

    def __init__(self, out_dir: Path, entries: list[tuple[str, tuple[int, ...], np.dtype]], max_shard_bytes: int):
        self.out_dir = Path(out_dir)
        shards: list[list] = [[]]
        size = 0
        for name, shape, dtype in entries:
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, tuple(shape), np.dtype(dtype), nbytes))
            size += nbytes
        n = len(shards)
        self.files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                                                           for i in range(n)]
        self._slots: dict[str, tuple] = {}  # name -> (file index, absolute offset, shape, dtype)
        self._handles = []
        self.total_size = 0
        for fi, (fname, shard) in enumerate(zip(self.files, shards)):
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for name, shape, dtype, nbytes in shard:
                header[name] = {"dtype": ST_DTYPES[dtype], "shape": list(shape),
                                "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
            start = 8 + len(raw)
            f = open(self.out_dir / fname, "wb")
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(start + offset)
            self._handles.append(f)
            for name, shape, dtype, nbytes in shard:
                self._slots[name] = (fi, start + header[name]["data_offsets"][0], shape, dtype)
            self.total_size += offset
        self._written: set[str] = set()

    def write(self, name: str, array: np.ndarray) -> None:
        fi, offset, shape, dtype = self._slots[name]
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(f"{name}: planned {shape} {dtype}, got {array.shape} {array.dtype}")
        f = self._handles[fi]
        f.seek(offset)
        f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # no extra copy
        self._written.add(name)

    def abort(self) -> None:
        for f in self._handles:
            f.close()

    def close(self) -> None:
        for f in self._handles:
            f.close()
        missing = set(self._slots) - self._written
        if missing:
            raise RuntimeError(f"tensors planned but never written: {sorted(missing)}")
        if len(self.files) > 1:
            weight_map = {name: self.files[fi] for name, (fi, *_rest) in self._slots.items()}
            (self.out_dir / INDEX).write_text(json.dumps(
                {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}, indent=2))
