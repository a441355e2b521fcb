"""The forms the CPU train step was made fast with (docs/training.md, "Where the step's time went").

Each test fails when its form comes back to the one that cost time, read from the traced program:
- `ops.dense` contracts one axis in every matmul of its gradient. With x's (B, T) axes kept, the
  weight gradient contracted two, and XLA:CPU transposed it into a copy and ran it outside YNNPACK
  (the tiny_uniform step took 1.19x as long);
- on a CPU the scan over a group's stacked layers is unrolled (`Policy.unroll_layer_scan`; 0.85x
  the step's time), while the parameters stay stacked;
- blockwise attention on one query block and one key block has no loop or cond, and causal
  self-attention there runs as two halves that never compute the masked quarter (0.95x the step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm import ops
from jaxlm.model import ModelConfig, build_model
from jaxlm.ops.policy import POLICIES
from kernels_pallas.attention import blockwise_attention


def _equations(jaxpr) -> list:
    """Every equation of a closed jaxpr, sub-jaxprs (scan, cond, custom VJP bodies) included."""
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn)
        for sub in _params_jaxprs(eqn):
            out.extend(_equations(sub))
    return out


def _params_jaxprs(eqn):
    """The jaxprs among an equation's parameters."""
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):  # ClosedJaxpr
                yield item.jaxpr
            elif hasattr(item, "eqns"):
                yield item


def test_dense_gradient_contracts_one_axis():
    x = jnp.ones((2, 8, 16))
    w = jnp.ones((16, 2, 3, 4))  # "btd,dkgh->btkgh", as the fused qkv projection

    def loss(x, w):
        return jnp.sum(ops.dense("btd,dkgh->btkgh", x, w) ** 2)

    dots = [e for e in _equations(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w).jaxpr)
            if e.primitive.name == "dot_general"]
    assert len(dots) == 3  # the forward, dx and dW
    for eqn in dots:
        (lhs_contract, rhs_contract), (lhs_batch, _) = eqn.params["dimension_numbers"]
        assert len(lhs_contract) == len(rhs_contract) == 1 and not lhs_batch, eqn


def test_cpu_unrolls_the_layer_scan_over_stacked_parameters():
    assert POLICIES["cpu"].unroll_layer_scan and not POLICIES["tpu"].unroll_layer_scan
    cfg = ModelConfig(vocab_size=64, model_dim=32, num_layers=3, head_dim=8, num_query_heads=4, num_kv_heads=2,
                      ffn_dim=64, max_context=32)
    model = build_model(cfg, seed=0)
    assert model.groups[0].ffn.w_in[...].shape[0] == 3  # the parameters stay stacked
    tokens = jnp.zeros((1, 8), jnp.int32)
    scans = [e for e in _equations(jax.make_jaxpr(lambda t: model(t))(tokens).jaxpr) if e.primitive.name == "scan"]
    layer_scans = [e for e in scans if e.params["length"] == 3]
    assert layer_scans and all(e.params["unroll"] >= 3 for e in layer_scans)


def test_one_block_attention_has_no_loop_or_cond():
    q = jnp.ones((1, 16, 4, 8))
    kv = jnp.ones((1, 16, 2, 8))

    def loss(q, k, v):
        return jnp.sum(blockwise_attention(q, k, v, causal=True, segment_ids=jnp.ones((1, 16), jnp.int32)))

    names = {e.primitive.name for e in _equations(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, kv, kv).jaxpr)}
    assert not names & {"while", "cond"}, names
    longer = jax.make_jaxpr(lambda q, k, v: blockwise_attention(q, k, v, block_q=8, block_k=8))(q, kv, kv)
    assert {"while", "cond"} <= {e.primitive.name for e in _equations(longer.jaxpr)}  # two blocks: loops, skips


def test_causal_self_attention_in_one_block_skips_the_masked_quarter():
    q, kv = jnp.ones((1, 64, 4, 8)), jnp.ones((1, 64, 2, 8))
    jaxpr = jax.make_jaxpr(lambda q, k, v: blockwise_attention(q, k, v, causal=True))(q, kv, kv)
    scores = [e.outvars[0].aval.shape[-2:] for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"
              and e.outvars[0].aval.shape[-1] != 8]
    assert sorted(scores) == [(32, 32), (32, 64)], scores  # (queries, keys): two halves, never (64, 64)
    full = jax.make_jaxpr(lambda q, k, v: blockwise_attention(q, k, v, causal=False))(q, kv, kv)
    assert [e.outvars[0].aval.shape[-2:] for e in _equations(full.jaxpr) if e.primitive.name == "dot_general"
            and e.outvars[0].aval.shape[-1] != 8] == [(64, 64)]
