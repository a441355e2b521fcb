"""The decoder-only transformer (Flax NNX): pre-norm blocks with per-layer sizes.

Layout of the weights (JAX convention, inputs first):
  embed        (V, D)                          token embeddings; also the output head when tied
  attn.qkv     (D, Hkv, G + 2, hd)             fused projection, per kv head: its G query heads, k, v
  attn.out     (Hkv, G, hd, D)
  ffn.w_in     (D, 2, F)                       gated FFN; [:, 0] is the gate, [:, 1] the up projection
  ffn.w_out    (F, D)
  lm_head      (D, V)                          only when embeddings are untied
Grouping q heads under their kv head keeps each kv head's q, k and v together, so tensor
parallelism can split the fused projection along kv heads.
Layers with identical sizes are stacked on a leading "layers" axis and run with lax.scan; with
`scan_pad_budget`, so are buckets of similar layers, zero-padded to one shape (jaxlm.model.buckets).

Einsum letters: b batch, t tokens (query positions), d model_dim, k kv heads (Hkv), g query heads per
kv head (G), h head_dim, c the FFN's gate/up pair (2), f ffn_dim, v vocabulary.

Static options (norm eps, kernel impls, the sliding window) are fixed when a block is built, from the
config; `__call__` takes data only. Every block returns (output, cache), cache None when not decoding.
`Transformer.__call__` gives logits; `Transformer.cached` writes a KV cache and gives (logits, cache).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm import ops
from jaxlm.model import kv_cache
from jaxlm.model.config import LayerSpec, ModelConfig
from jaxlm.model.layout import BLOCK_WEIGHTS, EMBED_AXES, LM_HEAD_AXES, NORM_AXES
from jaxlm.model.rope import apply_rope, rope_tables
from jaxlm.ops.policy import policy
from jaxlm.parallel.rules import constrain

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, axes: tuple, dtype) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype), axes=axes)


def _ones(shape: tuple[int, ...], axes: tuple, dtype) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, dtype), axes=axes)


class Attention(nnx.Module):
    """Grouped-query attention with fused qkv, optional QK-norm and RoPE."""

    def __init__(self, stack: int, cfg: ModelConfig, spec: LayerSpec, out_std: float, *, rngs: nnx.Rngs):
        dt = jnp.dtype(cfg.param_dtype)
        self.num_groups = spec.num_query_heads // spec.num_kv_heads  # query heads per kv head (G)
        self.head_dim = cfg.head_dim
        self.norm_eps, self.norm_impl = cfg.norm_eps, cfg.norm_impl
        self.attention_impl, self.sliding_window = cfg.attention_impl, cfg.sliding_window
        lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
        self.qkv = _param(rngs, lead + (cfg.model_dim, spec.num_kv_heads, self.num_groups + 2, cfg.head_dim),
                          cfg.model_dim ** -0.5, lead_axes + BLOCK_WEIGHTS["attn.qkv"].axes, dt)
        self.out = _param(rngs, lead + (spec.num_kv_heads, self.num_groups, cfg.head_dim, cfg.model_dim), out_std,
                          lead_axes + BLOCK_WEIGHTS["attn.out"].axes, dt)
        head_norm = lead + (cfg.head_dim,), lead_axes + ("head_dim",), dt
        self.q_norm = _ones(*head_norm) if cfg.qk_norm else None
        self.k_norm = _ones(*head_norm) if cfg.qk_norm else None

    def __call__(self, x, cos, sin, *, segment_ids, positions, cache):
        """x (B, T, D) -> ((B, T, D), the new cache or None)."""
        b, t, _ = x.shape
        g = self.num_groups
        qkv = ops.dense("btd,dkgh->btkgh", x, self.qkv[...])  # (B, T, Hkv, G + 2, hd)
        hkv = qkv.shape[2]
        q = qkv[:, :, :, :g].reshape(b, t, hkv * g, self.head_dim)  # (B, T, Hq, hd); head h -> kv head h // G
        k, v = qkv[:, :, :, g], qkv[:, :, :, g + 1]  # (B, T, Hkv, hd)
        if self.q_norm is not None:
            q = ops.rms_norm(q, self.q_norm[...], self.norm_eps, self.norm_impl)
            k = ops.rms_norm(k, self.k_norm[...], self.norm_eps, self.norm_impl)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            out = ops.attention(q, k, v, causal=True, segment_ids=segment_ids, sliding_window=self.sliding_window,
                                impl=self.attention_impl)
        else:
            cache, k_all, v_all = kv_cache.update_layer(cache, k, v, positions[:, 0])  # (B, Hkv, S, hd)
            out = ops.cached_attention(q, k_all, v_all, positions, sliding_window=self.sliding_window,
                                       impl=self.attention_impl)
        out = out.reshape(b, t, hkv, g, self.head_dim)
        return ops.dense("btkgh,kghd->btd", out, self.out[...]), cache


class FeedForward(nnx.Module):
    """Gated FFN: w_out(act(x @ gate) * (x @ up)); SwiGLU with act = silu."""

    def __init__(self, stack: int, model_dim: int, ffn_dim: int, activation: str, out_std: float, param_dtype,
                 *, rngs: nnx.Rngs):
        lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
        self.activation = activation
        self.w_in = _param(rngs, lead + (model_dim, 2, ffn_dim), model_dim ** -0.5,
                           lead_axes + BLOCK_WEIGHTS["ffn.w_in"].axes, param_dtype)
        self.w_out = _param(rngs, lead + (ffn_dim, model_dim), out_std, lead_axes + BLOCK_WEIGHTS["ffn.w_out"].axes,
                            param_dtype)

    def __call__(self, x):
        h = ops.dense("btd,dcf->btcf", x, self.w_in[...])  # (B, T, 2, F)
        act = jax.nn.silu if self.activation == "silu" else jax.nn.gelu
        return ops.dense("btf,fd->btd", act(h[:, :, 0]) * h[:, :, 1], self.w_out[...])


class Block(nnx.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then h + ffn(norm(h)).

    With stack > 0 every parameter has a leading axis of that size (a group of identical layers).
    """

    def __init__(self, stack: int, cfg: ModelConfig, spec: LayerSpec, *, rngs: nnx.Rngs):
        dt = jnp.dtype(cfg.param_dtype)
        out_std = cfg.model_dim ** -0.5 * (2 * cfg.num_layers) ** -0.5
        lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
        self.norm_eps, self.norm_impl = cfg.norm_eps, cfg.norm_impl
        self.attn_norm = _ones(lead + (cfg.model_dim,), lead_axes + NORM_AXES, dt)
        self.attn = Attention(stack, cfg, spec, out_std, rngs=rngs)
        self.ffn_norm = _ones(lead + (cfg.model_dim,), lead_axes + NORM_AXES, dt)
        self.ffn = FeedForward(stack, cfg.model_dim, spec.ffn_dim, cfg.activation, out_std, dt, rngs=rngs)

    def __call__(self, x, cos, sin, *, segment_ids, positions, cache):
        """x (B, T, D) -> ((B, T, D), the new cache or None)."""
        attn_out, cache = self.attn(ops.rms_norm(x, self.attn_norm[...], self.norm_eps, self.norm_impl), cos, sin,
                                    segment_ids=segment_ids, positions=positions, cache=cache)
        h, normed = ops.rms_norm_residual(attn_out, x, self.ffn_norm[...], self.norm_eps,
                                          self.norm_impl)  # h = x + attn_out
        return h + self.ffn(normed), cache


class Transformer(nnx.Module):
    """Token ids -> logits. See the module docstring for the weight layout."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = jnp.dtype(cfg.param_dtype)
        self.embed = _param(rngs, (cfg.vocab_size, cfg.model_dim), cfg.model_dim ** -0.5, EMBED_AXES, dt)
        self.groups = nnx.List([Block(count, cfg, spec, rngs=rngs) for spec, count in cfg.scan_groups])
        self.final_norm = _ones((cfg.model_dim,), NORM_AXES, dt)
        self.lm_head = None if cfg.tie_embeddings else _param(
            rngs, (cfg.model_dim, cfg.vocab_size), cfg.model_dim ** -0.5, LM_HEAD_AXES, dt)

    def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        """tokens (B, T) int -> logits (B, T, V) float32. positions (B, T): default restart at 0 in each
        segment. segment_ids (B, T): packed documents (tokens attend only within their segment)."""
        return self.logits(self.hidden_states(tokens, positions=positions, segment_ids=segment_ids))

    def cached(self, tokens: jax.Array, *, positions: jax.Array, cache: list, seq_lengths: jax.Array | None = None):
        """Decode (or prefill) against a KV cache from `kv_cache.init_cache`: tokens (B, T) are written at
        `positions` (B, T) -> (logits (B, T, V) float32, the new cache)."""
        hidden, cache = self.cached_hidden_states(tokens, positions=positions, cache=cache, seq_lengths=seq_lengths)
        return self.logits(hidden), cache

    def hidden_states(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None, seq_lengths: jax.Array | None = None) -> jax.Array:
        """As __call__, but stops before the output projection: (B, T, D) after the final norm, in the compute
        dtype. The train step and the scorer project only what they need. seq_lengths: as in
        `cached_hidden_states`."""
        if positions is None:
            positions = segment_positions(segment_ids) if segment_ids is not None else jnp.broadcast_to(
                jnp.arange(tokens.shape[1]), tokens.shape)
        return self._run(tokens, positions, segment_ids, None, seq_lengths)[0]

    def cached_hidden_states(self, tokens: jax.Array, *, positions: jax.Array, cache: list,
                             seq_lengths: jax.Array | None = None):
        """As `cached`, stopping before the output projection: ((B, T, D), the new cache). Prefill projects only
        each row's last token. seq_lengths (B,): real tokens per row of a right-padded batch, for LongRoPE's
        per-row choice of factors (see `rope_tables`); default each row's largest position + 1."""
        return self._run(tokens, positions, None, cache, seq_lengths)

    def _run(self, tokens, positions, segment_ids, cache, seq_lengths):
        cfg = self.cfg
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_context,
                               seq_lengths)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(jnp.dtype(cfg.compute_dtype))  # (B, T, D)
        data = dict(segment_ids=segment_ids, positions=positions)
        new_cache = []
        for i, block in enumerate(self.groups):
            x, group_cache = run_group(block, x, cos, sin, None if cache is None else cache[i], cfg.remat, data)
            new_cache.append(group_cache)
        x = ops.rms_norm(x, self.final_norm[...], cfg.norm_eps, cfg.norm_impl)
        return x, (None if cache is None else new_cache)

    def output_head(self) -> tuple[str, jax.Array]:
        """The output projection as (einsum equation (B, T, D) -> (B, T, V), weight): the embedding
        (V, D) when tied, lm_head (D, V) otherwise; a quantized weight comes back dequantized."""
        if self.lm_head is None:
            return "btd,vd->btv", jnp.asarray(self.embed[...])
        return "btd,dv->btv", jnp.asarray(self.lm_head[...])

    def logits(self, x: jax.Array) -> jax.Array:
        """x (B, T, D) from `hidden_states` -> logits (B, T, V) float32 (see `project_logits`)."""
        return project_logits(x, *self.output_head())


def project_logits(x: jax.Array, equation: str, weight: jax.Array) -> jax.Array:
    """The output projection in x's (compute) dtype with float32 accumulation, kept in float32
    (not rounded to bf16 and upcast): (B, T, D) -> (B, T, V) float32."""
    return ops.dense(equation, x, weight, out_dtype=jnp.float32)


def run_group(block: Block, x, cos, sin, cache, remat: str, data: dict):
    """Run a stack of identical layers with lax.scan over their stacked parameters (and cache). data: the
    blocks' segment_ids and positions."""
    graphdef, state = nnx.split(block)
    return scan_block(graphdef, state, x, cos, sin, cache, remat, data)


def scan_block(graphdef, state, x, cos, sin, cache, remat: str, data: dict):
    """lax.scan of one block's graph over parameters (and cache) stacked on the leading axis, unrolled where
    the platform's policy says (`unroll_layer_scan`; the parameters stay stacked either way)."""

    def body(h, layer):
        layer_state, layer_cache = layer
        h, layer_cache = nnx.merge(graphdef, layer_state)(h, cos, sin, cache=layer_cache, **data)
        return constrain(h, ("batch", None, None)), layer_cache  # no-op without a training mesh

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
    unroll = policy(ops.target_platform()).unroll_layer_scan
    x, cache = jax.lax.scan(body, x, (state, cache), unroll=unroll)
    return x, cache


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """(B, T) segment ids -> positions restarting at 0 where the segment changes."""
    idx = jnp.broadcast_to(jnp.arange(segment_ids.shape[1]), segment_ids.shape)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)


def param_count(model_or_state) -> int:
    """Number of parameters (elements of nnx.Param variables); works on abstract shapes. A model with
    layer buckets counts its real (unpadded) layers, not the zero padding."""
    cfg = getattr(model_or_state, "cfg", None)
    if isinstance(cfg, ModelConfig) and cfg.bucketed:
        stored = nnx.eval_shape(lambda: Transformer(cfg.stored(), rngs=nnx.Rngs(params=0)))
        return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(stored, nnx.Param)))
    state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))
