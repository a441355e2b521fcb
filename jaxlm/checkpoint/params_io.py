"""A saved params tree, one array (or one layer) at a time.

In memory (and in training checkpoints), the layers of each group of identical layers are stacked:
`groups/<g>/<leaf>` has the group's layers on axis 0, so the group runs as one `lax.scan`. Model
directories store every layer on its own instead: `layers/<i>/<leaf>`, i the global layer index
(`jaxlm.model.layouts.per_layer_leaves`), and `load_model` stacks them again (`layouts.restack`). So
a model dir is written and read a layer at a time (conversion never holds a stack of layers) and does not depend on how
layers are grouped. Folders Orbax can hold:

    params/          a PyTree item: training checkpoints (RUN_DIR/checkpoints/<step>/params) and
                     model dirs written before per-layer storage (stacked leaves)
    params/state/    Orbax's partial-save layout, per-layer leaves: model dirs written by `ParamWriter`

`ParamWriter` saves a few leaves per Orbax partial save, so a producer of leaves one at a time
(`jaxlm convert from-hf`) never holds the model. Training checkpoints store stacked leaves one layer
per chunk (`layouts.is_layer_stack`), so `ParamReader.read_layer` decodes one layer of them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

import jax
import numpy as np

from jaxlm.errors import JaxlmError
from jaxlm.model.layouts import LeafPath

STATE = "state"  # Orbax's item folder in the partial-save layout
BATCH_BYTES = 128 * 2**20  # leaves gathered per partial save (a larger leaf goes alone)


def params_item(params_dir: Path) -> Path:
    """The folder Orbax's PyTree reader takes, in either layout."""
    params_dir = Path(params_dir)
    return params_dir / STATE if (params_dir / STATE / "_METADATA").is_file() else params_dir


def nest(flat: dict[LeafPath, object]) -> dict:
    out: dict = {}
    for path, x in flat.items():
        insert(out, path, x)
    return out


def insert(tree: dict, path: tuple, value) -> None:
    """tree[path[0]][path[1]]... = value, creating the dicts on the way."""
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


class ParamWriter:
    """Write a params folder from (path, array) pairs arriving one at a time; `close` commits it."""

    def __init__(self, params_dir: Path, batch_bytes: int | None = None):
        # lazy: Orbax loads when a model dir is written, not with `import jaxlm.checkpoint`
        from orbax.checkpoint.experimental.v1 import partial

        self.params_dir = Path(params_dir)
        self._partial = partial
        self.batch_bytes = BATCH_BYTES if batch_bytes is None else batch_bytes
        self._batch: dict = {}
        self._bytes = 0
        self.saves = 0  # Orbax partial saves made (tests check that a large model takes several)

    def put(self, path: LeafPath, array: np.ndarray) -> None:
        """Add a leaf; a batch reaching batch_bytes is saved at once (a larger leaf is saved alone)."""
        array = np.asarray(array)
        if self._batch and self._bytes + array.nbytes > self.batch_bytes:
            self._flush()
        insert(self._batch, path, array)
        self._bytes += array.nbytes
        if self._bytes >= self.batch_bytes:
            self._flush()

    def put_all(self, leaves: Iterable[tuple[LeafPath, np.ndarray]]) -> None:
        """Consume (path, array) pairs, dropping each before asking for the next, so a generator
        that builds leaves one at a time never has two alive here."""
        it = iter(leaves)
        while (item := next(it, None)) is not None:
            self.put(*item)
            item = None

    def close(self) -> None:
        self._flush()
        if self.saves == 0:
            raise ValueError("no parameters were written")
        self._partial.finalize(self.params_dir)

    def _flush(self) -> None:
        if not self._batch:
            return
        # lazy: Orbax, as above
        import orbax.checkpoint.experimental.v1 as ocp_v1

        ctx = ocp_v1.Context()
        ctx.memory_options.deepcopy_host_arrays = False  # the save is synchronous and nothing mutates the batch
        with ctx:
            self._partial.save(self.params_dir, self._batch)
        self.saves += 1
        self._batch, self._bytes = {}, 0


class ParamReader:
    """Leaves of a params folder (either layout): shapes from metadata, values one array or one layer
    at a time."""

    def __init__(self, params_dir: Path):
        # lazy: Orbax loads when a params folder is read, not with `import jaxlm.checkpoint`
        import orbax.checkpoint as ocp

        self.item = params_item(params_dir)
        self._ocp = ocp
        with _readable(self.item), quiet_absl(), ocp.PyTreeCheckpointer() as ck:
            meta = ck.metadata(self.item).item_metadata
        self._keys: dict[LeafPath, tuple] = {}
        self._meta: dict[LeafPath, object] = {}
        self.shapes: dict[LeafPath, tuple[tuple[int, ...], np.dtype]] = {}
        tree = getattr(meta, "tree", meta)
        self._zarr = "zarr3" if getattr(meta, "use_zarr3", False) else "zarr"  # v2: CheckpointManager's default
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]:
            keys = tuple(k.key for k in path)
            name = tuple(str(k) for k in keys)
            self._keys[name] = keys
            self._meta[name] = leaf
            self.shapes[name] = (tuple(leaf.shape), np.dtype(leaf.dtype))
        if not self.shapes:  # e.g. manifest.ocdbt deleted: Orbax reads an empty tree
            # lazy: metadata imports Orbax
            from jaxlm.checkpoint.metadata import corrupt

            raise corrupt(self.item, None)
        self._stores: dict[LeafPath, object] = {}

    def read(self, path: LeafPath) -> np.ndarray:
        """The whole leaf (Orbax partial restore of that one leaf)."""
        ocp = self._ocp
        item: dict = {}
        args: dict = {}
        keys = self._keys[path]
        insert(item, keys, 0)
        insert(args, keys, ocp.RestoreArgs(restore_type=np.ndarray))
        with _readable(self.item), quiet_absl(), ocp.PyTreeCheckpointer() as ck:
            out = ck.restore(self.item, args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                                      partial_restore=True))
        for k in keys:
            out = out[k]
        return np.asarray(out)

    def layer_chunked(self, path: LeafPath) -> bool:
        """Whether the leaf is stored one layer per chunk in an OCDBT store (how jaxlm writes them)."""
        meta = self._meta[path]
        chunk = getattr(getattr(meta, "storage", None), "chunk_shape", None)
        directory = Path(str(getattr(meta, "directory", self.item)))
        return (chunk is not None and len(chunk) >= 2 and chunk[0] == 1
                and (directory / "manifest.ocdbt").is_file() and hasattr(meta, "name"))

    def read_layer(self, path: LeafPath, layer: int) -> np.ndarray:
        """Layer `layer` of a stacked leaf. Reads only that layer's chunk when `layer_chunked`,
        otherwise the whole leaf (an older or differently chunked checkpoint)."""
        if not self.layer_chunked(path):
            return self.read(path)[layer]
        with _readable(self.item):
            store = self._stores.get(path) or self._open(path)
            self._stores = {path: store}  # keep only the leaf being read open
            return np.asarray(store[layer].read().result())

    def _open(self, path: LeafPath):
        # lazy: loaded with Orbax, when a layer is read
        import tensorstore as ts

        meta = self._meta[path]
        directory = Path(str(meta.directory)).absolute()
        spec = {"driver": self._zarr,
                "kvstore": {"driver": "ocdbt", "base": f"file://{directory}/", "path": f"{meta.name}/"}}
        # No cache: a chunk is decoded, copied out and dropped.
        return ts.open(spec, open=True, read=True, context=ts.Context({"cache_pool": {"total_bytes_limit": 0}})
                       ).result()


@contextlib.contextmanager
def _readable(item: Path):
    """Orbax and tensorstore raise plain Exceptions on damaged files: one JaxlmError naming them."""
    # lazy: metadata imports Orbax
    from jaxlm.checkpoint.metadata import corrupt

    try:
        yield
    except JaxlmError:
        raise
    except Exception as e:
        raise corrupt(item, e) from None


@contextlib.contextmanager
def quiet_absl():
    """Orbax warns that an item folder has no top-level metadata file (a CheckpointManager item, or
    the partial-save layout's state/); it reads fine."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))  # never louder than the caller (the CLI: CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
