"""The jaxlm side: read a saved params tree one array at a time; write a model directory.

Reading uses Orbax partial restore of a single leaf (as numpy), so the whole tree is never in
memory. Orbax saves a tree in one call, so writing fills disk-backed numpy memmaps leaf by leaf
(the OS can page them out) and hands those to `save_model`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from jaxlm.convert.plan import Path as LeafPath


class ParamReader:
    """Leaves of an Orbax params folder (model dir params/ or a run's checkpoints/<step>/params)."""

    def __init__(self, params_dir: Path):
        import jax
        import orbax.checkpoint as ocp

        self.params_dir = Path(params_dir)
        self._ocp = ocp
        with ocp.PyTreeCheckpointer() as ck:
            meta = ck.metadata(self.params_dir).item_metadata
        self._keys: dict[LeafPath, tuple] = {}
        self.shapes: dict[LeafPath, tuple[tuple[int, ...], np.dtype]] = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(meta)[0]:
            keys = tuple(k.key for k in path)
            name = tuple(str(k) for k in keys)
            self._keys[name] = keys
            self.shapes[name] = (tuple(leaf.shape), np.dtype(leaf.dtype))

    def read(self, path: LeafPath) -> np.ndarray:
        ocp = self._ocp
        item: dict = {}
        args: dict = {}
        node, arg_node = item, args
        keys = self._keys[path]
        for k in keys[:-1]:
            node, arg_node = node.setdefault(k, {}), arg_node.setdefault(k, {})
        node[keys[-1]] = 0
        arg_node[keys[-1]] = ocp.RestoreArgs(restore_type=np.ndarray)
        with ocp.PyTreeCheckpointer() as ck:
            out = ck.restore(self.params_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                                            partial_restore=True))
        for k in keys:
            out = out[k]
        return np.asarray(out)


class ParamBuffers:
    """Disk-backed arrays for every leaf of a params tree, filled one leaf (or one layer) at a time."""

    def __init__(self, scratch: Path, shapes: dict[LeafPath, tuple[tuple[int, ...], str]], dtype: np.dtype):
        scratch.mkdir(parents=True)
        self.scratch = scratch
        self.arrays = {path: np.lib.format.open_memmap(scratch / f"{i}.npy", mode="w+", dtype=dtype, shape=shape)
                       for i, (path, (shape, _)) in enumerate(shapes.items())}

    def put(self, path: LeafPath, layer: int | None, value: np.ndarray) -> None:
        if layer is None:
            self.arrays[path][...] = value
        else:
            self.arrays[path][layer] = value

    def pure_dict(self) -> dict:
        """Nested dict in the params tree's own key types (ints for the groups list)."""
        out: dict = {}
        for path, arr in self.arrays.items():
            node = out
            for k in path[:-1]:
                node = node.setdefault(int(k) if k.isdigit() else k, {})
            node[path[-1]] = arr
        return out

    def close(self) -> None:
        for arr in self.arrays.values():
            arr.flush()
        self.arrays = {}
        shutil.rmtree(self.scratch, ignore_errors=True)
