"""The weight layout is defined once (jaxlm.model.layout) and the float, LoRA, dequantized and merged
models all take their logical axes, hence their shardings, from it."""

import dataclasses

import jax
from flax import nnx

from jaxlm.lora.adapters import apply_lora, merge_lora
from jaxlm.lora.config import TARGETS, LoraConfig
from jaxlm.model import ModelConfig, abstract_model, build_model
from jaxlm.model.layout import BLOCK_WEIGHTS
from jaxlm.parallel import make_mesh, param_shardings
from jaxlm.quant import QuantConfig, quantize_model
from jaxlm.quant.model import dequantize_model
from jaxlm.training.state import logical_axes

CFG = ModelConfig(vocab_size=64, model_dim=32, num_layers=2, head_dim=8, num_query_heads=4, num_kv_heads=2,
                  ffn_dim=64)


def axes_of(model) -> dict:
    return {jax.tree_util.keystr(p): a for p, a in
            jax.tree_util.tree_flatten_with_path(logical_axes(nnx.state(model, nnx.Param)),
                                                 is_leaf=lambda x: isinstance(x, tuple))[0]}


def test_float_model_axes_come_from_the_table():
    axes = axes_of(abstract_model(CFG))
    for name, w in BLOCK_WEIGHTS.items():
        assert axes[f"['groups'][0]['{w.module}']['{w.attr}']"] == ("layers",) + w.axes, name


def test_lora_adapters_shard_like_their_base_weight_and_merge_back_to_it():
    mesh = make_mesh(2, 2, 2, jax.devices()[:8])
    plain = abstract_model(CFG)
    lora = apply_lora(abstract_model(CFG), LoraConfig(enabled=True, rank=4))
    state = nnx.state(plain, nnx.Param)
    specs = param_shardings(logical_axes(state), state.to_pure_dict(), mesh)
    lstate = nnx.state(lora, nnx.LoRAParam)
    lspecs = param_shardings(logical_axes(lstate), lstate.to_pure_dict(), mesh)
    for target, (module, attr) in TARGETS.items():
        w = BLOCK_WEIGHTS[f"{module}.{attr}"]
        n_in, _ = w.dims
        base = specs["groups"][0][module][attr].spec
        a = lspecs["groups"][0][module][attr]["lora_a"].spec
        b = lspecs["groups"][0][module][attr]["lora_b"].spec
        assert tuple(a)[:1 + n_in] == tuple(base)[:1 + n_in] and a[-1] is None, target  # A: the base's input dims
        assert tuple(b)[2:] == tuple(base)[1 + n_in:] and b[1] is None, target  # B: the base's output dims
    merged = merge_lora(apply_lora(build_model(CFG, seed=0), LoraConfig(enabled=True, rank=4)))
    assert axes_of(merged) == axes_of(plain)


def _mesh_axis(spec: tuple) -> str | None:
    """The one mesh axis that shards any of these dims of a float weight (None: unsharded)."""
    named = [a for a in spec if a is not None]
    assert len(named) <= 1, spec
    return named[0] if named else None


def _leaf(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_quantized_codes_and_scales_shard_like_the_float_weight():
    """Codes (L, K / per_byte, N), scales and zero points (L, K / g, N) split K over the mesh axis of the
    float weight's input dims and N over that of its output dims, wherever the size divides."""
    cfg = dataclasses.replace(CFG, model_dim=128, head_dim=16, ffn_dim=128)  # K / g divides the mesh at g = 32
    mesh = make_mesh(2, 2, 2, jax.devices()[:8])

    def shardings(model):
        state = nnx.state(model, nnx.Param)
        return param_shardings(logical_axes(state), state.to_pure_dict(), mesh), state.to_pure_dict()

    float_specs, _ = shardings(abstract_model(cfg))
    # (path, float dims of K, float dims of N), lead = the stacked-layer axis
    weights = {f"{w.module}.{w.attr}": (("groups", 0, w.module, w.attr), slice(1, 1 + w.dims[0]),
                                        slice(1 + w.dims[0], None)) for w in BLOCK_WEIGHTS.values()}
    weights["embed"] = (("embed",), slice(1, 2), slice(0, 1))  # the (V, D) table, quantized as (D, V)
    for qcfg in (QuantConfig(bits=8, embed_bits=8), QuantConfig(bits=4, group_size=32, symmetric=False)):
        q_specs, q_state = shardings(quantize_model(abstract_model(cfg), qcfg))
        for name, (path, k_dims, n_dims) in weights.items():
            if name == "embed" and qcfg.embed_bits != 8:
                continue
            fspec = tuple(_leaf(float_specs, path).spec)
            lead = fspec[:1] if name != "embed" else ()
            k_axis, n_axis = _mesh_axis(fspec[k_dims]), _mesh_axis(fspec[n_dims])
            assert k_axis and n_axis, (name, fspec)  # this mesh splits both sides of every float weight
            leaves = _leaf(q_specs, path)
            assert set(leaves) == ({"codes", "scale"} if qcfg.symmetric else {"codes", "scale", "zero"}), name
            for leaf, sharding in leaves.items():
                shape = _leaf(q_state, path)[leaf].shape
                # a per-channel scale has one group (K / g = 1): nothing to split on that dim
                want_k = k_axis if shape[-2] % mesh.shape[k_axis] == 0 else None
                assert want_k or (leaf != "codes" and shape[-2] == 1), (qcfg.bits, name, leaf, shape)
                assert tuple(sharding.spec) == lead + (want_k, n_axis), (qcfg.bits, name, leaf, sharding.spec, fspec)


def test_dequantized_model_has_the_float_axes():
    q = quantize_model(build_model(CFG, seed=0), QuantConfig(bits=8))
    assert axes_of(dequantize_model(q)) == axes_of(build_model(CFG, seed=0))


def test_a_changed_table_entry_changes_the_model(monkeypatch):
    import jaxlm.model.layout as layout

    w = layout.BLOCK_WEIGHTS["ffn.w_out"]
    monkeypatch.setitem(layout.BLOCK_WEIGHTS, "ffn.w_out", dataclasses.replace(w, out_axes=(None,)))
    assert axes_of(abstract_model(CFG))["['groups'][0]['ffn']['w_out']"] == ("layers", "mlp", None)
