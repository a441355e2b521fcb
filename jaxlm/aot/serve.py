"""The serving engine's paged decode step on a mesh (`jaxlm compile CONFIG --topology ... --serve`).

One program: `jaxlm.serving.step.run_step` for max_slots rows of one token each, attending over each
row's full page table (the largest view the engine compiles), from abstract shapes. On a TPU target
with attention impl "pallas" or "auto", attention reads the pages in place with JAX's Pallas
paged-attention kernel (`jaxlm.ops.paged`); the report shows its Mosaic calls. The page pool is
split over "tensor" by kv heads where they divide (else whole), and whole across the batch axes.

`pages_that_fit`: the compiled step's per-device footprint less its own pool is what the weights and
the step need; the rest of the chip's HBM, divided by one page's bytes per device, is how many pages
(tokens in flight = pages x page_size) the serving engine could hold on that slice.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlm.lora.config import LoraConfig
from jaxlm.model import paged_kv
from jaxlm.parallel import param_shardings, use_mesh
from jaxlm.serving.step import run_step
from jaxlm.training.program import with_shardings
from jaxlm.training.state import logical_axes
from jaxlm.variants import model_for


def pool_shardings(cfg, mesh: Mesh, pools) -> list[dict]:
    """Each group's pool split on its kv-head axis (1) over "tensor" when the heads divide, else whole."""
    tensor = mesh.shape.get("tensor", 1)
    out = []
    for (spec, _), group in zip(cfg.scan_groups, pools):
        heads = "tensor" if tensor > 1 and spec.num_kv_heads % tensor == 0 else None
        out.append({name: NamedSharding(mesh, P(None, heads, *(None,) * (x.ndim - 2))) for name, x in group.items()})
    return out


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape)
        total += jnp.dtype(x.dtype).itemsize * math.prod(shard)
    return total


def serve_program(run_cfg, mesh: Mesh, max_slots: int, page_size: int, num_pages: int | None,
                  cache_dtype: str = "auto", layers: str = "unroll"):
    """(name, lower, note) for the paged decode step: lower(_) lowers it; note(report) is the report's line on
    the pages that fit (`pages_that_fit`)."""
    cfg = run_cfg.model
    cache_dtype = cfg.compute_dtype if cache_dtype == "auto" else cache_dtype
    pages_per_row = -(-cfg.max_context // page_size)
    num_pages = max_slots * pages_per_row if num_pages is None else num_pages
    if layers == "unroll":  # built per layer (what `to_unrolled` gives the engine), not sliced from abstract stacks
        cfg = dataclasses.replace(cfg.stored(), scan_layers=False)
    graphdef, state = nnx.split(model_for(cfg, run_cfg.quant, LoraConfig(), abstract=True))
    pure = state.to_pure_dict()
    state.replace_by_pure_dict(with_shardings(pure, param_shardings(logical_axes(state), pure, mesh)))
    pools = jax.eval_shape(lambda: paged_kv.init_pages(cfg, num_pages + 1, page_size, cache_dtype))
    pools = with_shardings(pools, pool_shardings(cfg, mesh, pools))
    whole = NamedSharding(mesh, P())
    rows = lambda dtype, *shape: jax.ShapeDtypeStruct((max_slots,) + shape, dtype, sharding=whole)  # noqa: E731
    args = (pools, rows(jnp.int32, 1), rows(jnp.int32), rows(jnp.int32, pages_per_row), rows(jnp.int32),
            rows(jnp.int32), rows(jnp.uint32), rows(jnp.int32), rows(jnp.float32), rows(jnp.int32),
            rows(jnp.float32), jax.ShapeDtypeStruct((), jnp.int32, sharding=whole))

    def step(state, *args):
        with use_mesh(mesh):
            return run_step(graphdef, state, *args, greedy_only=True)

    def lower(_):
        return jax.jit(step, donate_argnums=1).lower(state, *args)

    def note(report, hbm_bytes: int | None) -> str:
        return pages_line(pages_that_fit(report.peak_bytes, pools, num_pages, hbm_bytes), page_size, num_pages)

    name = (f"paged decode step ({max_slots} slots x 1 token, {num_pages} pages of {page_size} tokens, "
            f"view {pages_per_row} pages, cache {cache_dtype})")
    return name, lower, note


def pages_that_fit(peak_bytes: int, pools, num_pages: int, hbm_bytes: int | None) -> tuple[int, int] | None:
    """(pages, bytes of one page per device) the chip could hold beside the step's other needs; None if
    the HBM size is unknown."""
    if hbm_bytes is None:
        return None
    pool = per_device_bytes(pools)
    page = pool // (num_pages + 1)
    return max(0, (hbm_bytes - (peak_bytes - pool)) // page - 1), page  # less the trash page


def pages_line(fit: tuple[int, int] | None, page_size: int, num_pages: int) -> str:
    if fit is None:
        return "  KV pages: unknown HBM size for this chip"
    pages, page = fit
    return (f"  KV pages: {page / 2 ** 10:.1f} KiB per page per device; this program holds {num_pages}, "
            f"{pages} fit in HBM beside the weights and the step ({pages * page_size} tokens in flight)")
