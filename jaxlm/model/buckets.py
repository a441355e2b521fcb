"""Layer buckets: consecutive layers of different sizes padded to one shape, so they run as one scan.

OpenELM gives every layer its own number of heads and FFN width, so "runs of identical layers" are
single layers and each compiles as its own block (36 for OpenELM-3B). A bucket is a run of
consecutive layers with the same query heads per kv head (G), stored stacked at the run's largest
kv heads and FFN width, the extra units zero:

  attention   a padded kv head has zero q, k and v weights (all G of its query heads), so its output
              is softmax(0) @ 0 = 0, and it meets zero rows of the output projection;
  FFN         a padded unit has zero gate and up columns, act(0) * 0 = 0, and a zero row of w_out.

The gradient of every padded weight is then exactly zero, so AdamW (zero moments, decay of a zero
weight) keeps it zero: padding is exact in training, not only at init. The cost is the FLOPs spent on
the zeros; `plan` picks the fewest buckets whose extra training FLOPs stay within
`ModelConfig.scan_pad_budget` of the model's.

Two layouts of a params-shaped tree (params, AdamW moments): *stored* (`groups/<g>` = one run of
identical layers, unpadded: checkpoints and model dirs) and *bucketed* (`groups/<b>` = one bucket,
padded: the model in memory and the train step). `pad` and `unpad` convert, exactly; every layout and
its conversions: `jaxlm.model.layouts`.
"""

from __future__ import annotations

import dataclasses

from jaxlm.model.flops import layer_flops
from jaxlm.model.spec import LayerSpec


@dataclasses.dataclass(frozen=True)
class Bucket:
    spec: LayerSpec  # the padded shape every layer of the bucket is stored at
    members: tuple[tuple[LayerSpec, int], ...]  # the runs of identical layers it holds, in order

    @property
    def count(self) -> int:
        return sum(c for _, c in self.members)


def padded_spec(specs) -> LayerSpec:
    kv = max(s.num_kv_heads for s in specs)
    g = specs[0].num_query_heads // specs[0].num_kv_heads
    return LayerSpec(g * kv, kv, max(s.ffn_dim for s in specs))


def plan(runs: tuple[tuple[LayerSpec, int], ...], model_dim: int, head_dim: int, seq_len: int,
         budget: float, fixed_flops: int = 0) -> tuple[Bucket, ...]:
    """The fewest buckets of consecutive `runs` whose padded FLOPs exceed the unpadded ones by at most
    `budget` x (layers + fixed_flops, e.g. the output head); ties go to the least padding.

    Only runs with the same G may share a bucket (a padded query head would see real keys)."""
    n = len(runs)
    cost = [layer_flops(s, model_dim, head_dim, seq_len) for s, _ in runs]
    total = sum(c * k for c, (_, k) in zip(cost, runs)) + fixed_flops
    allowed = budget * total

    def waste(i: int, j: int) -> float | None:  # extra FLOPs of runs[i:j] as one bucket
        specs = [s for s, _ in runs[i:j]]
        if len({s.num_query_heads // s.num_kv_heads for s in specs}) > 1:
            return None
        pad = layer_flops(padded_spec(specs), model_dim, head_dim, seq_len)
        return sum((pad - cost[m]) * runs[m][1] for m in range(i, j))

    # best[k][j]: least waste covering runs[:j] with k buckets; cut[k][j]: where the last one starts
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(n + 1)]
    cut = [[0] * (n + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for k in range(1, n + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                w = waste(i, j)
                if w is not None and best[k - 1][i] + w < best[k][j]:
                    best[k][j], cut[k][j] = best[k - 1][i] + w, i
        if best[k][n] <= allowed:
            bounds, j = [], n
            for kk in range(k, 0, -1):
                bounds.append((cut[kk][j], j))
                j = cut[kk][j]
            return tuple(Bucket(padded_spec([s for s, _ in runs[i:j]]), runs[i:j]) for i, j in reversed(bounds))
    raise AssertionError("one bucket per run always fits the budget")


def overhead(buckets: tuple[Bucket, ...], model_dim: int, head_dim: int, seq_len: int, fixed_flops: int = 0) -> float:
    """Extra training FLOPs of the padding, as a fraction of the unpadded model's."""
    true = sum(layer_flops(s, model_dim, head_dim, seq_len) * c for b in buckets for s, c in b.members)
    padded = sum(layer_flops(b.spec, model_dim, head_dim, seq_len) * b.count for b in buckets)
    return (padded - true) / (true + fixed_flops)


def pad(tree: dict, bucketed_abs: dict, buckets: tuple[Bucket, ...]) -> dict:
    """A stored-layout params-shaped tree -> the bucketed layout: each run zero-padded at the end of
    every axis to its bucket's shape, the runs of a bucket concatenated on the layer axis."""
    # lazy: ModelConfig.buckets imports this module on every config read, which must not load JAX
    import jax
    import jax.numpy as jnp

    def pad(x, shape):
        return jnp.pad(x, [(0, want - have) for have, want in zip(x.shape, shape)])

    have, out = _ordered(tree["groups"]), _ordered(bucketed_abs["groups"])
    groups, g = {}, 0
    for key, bucket in zip(out, buckets):
        runs = [tree["groups"][have[g + m]] for m in range(len(bucket.members))]
        groups[key] = jax.tree.map(lambda want, *xs: jnp.concatenate([pad(x, (x.shape[0],) + want.shape[1:])
                                                                     for x in xs]), bucketed_abs["groups"][key], *runs)
        g += len(bucket.members)
    return {**tree, "groups": groups}


def unpad(tree: dict, stored_abs: dict, buckets: tuple[Bucket, ...]) -> dict:
    """The inverse of `pad`: each bucket split into its runs, the padding sliced off."""
    # lazy: as above
    import jax

    have, out = _ordered(tree["groups"]), _ordered(stored_abs["groups"])
    groups, g = {}, 0
    for b, bucket in enumerate(buckets):
        start = 0
        for _, count in bucket.members:
            want = stored_abs["groups"][out[g]]
            groups[out[g]] = jax.tree.map(
                lambda w, x, s=start: x[(slice(s, s + w.shape[0]),) + tuple(slice(0, n) for n in w.shape[1:])],
                want, tree["groups"][have[b]])
            start, g = start + count, g + 1
    return {**tree, "groups": groups}


def map_param_trees(fn, tree):
    """Apply fn to every params-shaped subtree (a dict holding "groups"): the params themselves, or an
    optimizer state's moments; everything else (counts, empty states) is kept."""
    # lazy: as above
    import jax

    def is_params(x):
        return isinstance(x, dict) and "groups" in x

    return jax.tree.map(lambda x: fn(x) if is_params(x) else x, tree, is_leaf=is_params)


def _ordered(groups: dict) -> list:
    """A groups dict's keys in layer order (nnx pure dicts key them by int, flattened paths by str)."""
    return sorted(groups, key=int)


