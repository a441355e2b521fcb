"""One training step's gradient on a transformers-made tiny Llama equals PyTorch's, per parameter.

The forward is checked against transformers elsewhere (test_convert); this checks the backward the
trainer takes: the model's hidden states, the chunked loss the train step uses, and autodiff through
RoPE (rotate-half pairs), GQA, RMSNorm and SwiGLU, against torch's autograd on the same weights. The
jaxlm gradient is mapped to HF names with the conversion plan (its transforms are permutations and
reshapes, so they carry gradients as they carry weights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert_helpers import VOCAB, text_batch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

from jaxlm.checkpoint import load_model  # noqa: E402
from jaxlm.convert import from_hf  # noqa: E402
from jaxlm.convert.family import family_for_model  # noqa: E402
from jaxlm.convert.plan import make_plan  # noqa: E402
from jaxlm.training.loss import chunked_loss_sums  # noqa: E402

ATOL = 1e-5  # max abs difference per gradient element, float32 (gradients here are up to ~1e-1)


def torch_grads(model, ids: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean next-token cross-entropy over the batch and its gradient per HF parameter name."""
    x = torch.tensor(ids, dtype=torch.long)
    logits = model(x[:, :-1]).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    model.zero_grad()
    loss.backward()
    return loss.item(), {n: p.grad.numpy() for n, p in model.named_parameters()}


def jaxlm_grads(model, ids: np.ndarray) -> tuple[float, dict]:
    """The same loss through the train step's pieces; gradient as a pure dict of the model's Params."""
    graphdef, params = nnx.split(model, nnx.Param)
    inputs, targets = jnp.asarray(ids[:, :-1]), jnp.asarray(ids[:, 1:])

    def loss_fn(p):
        m = nnx.merge(graphdef, p)
        sums = chunked_loss_sums(m.hidden_states(inputs), m.output_head(), targets,
                                 jnp.ones(targets.shape, jnp.float32), z_loss=0.0)
        return sums["total"] / sums["tokens"]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    return float(loss), grads.to_pure_dict()


def in_hf_names(cfg, grads: dict) -> dict[str, np.ndarray]:
    out = {}
    for item in make_plan(family_for_model(cfg, "llama"), cfg):
        leaf = grads
        for key in item.jax_path:
            leaf = leaf[key] if key in leaf else leaf[int(key)]  # nnx.List indices are ints
        leaf = np.asarray(leaf)
        if item.layer is not None:
            leaf = leaf[item.layer]
        out.update(zip(item.hf_names, item.rule.transform.to_hf(leaf)))
    return out


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # norms away from 1 so their gradients are tested too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("llama") / "hf"
    model.save_pretrained(path)
    return path, model


def test_train_gradient_equals_torch_per_parameter(tiny_llama, tmp_path):
    hf_dir, hf_model = tiny_llama
    from_hf(hf_dir, tmp_path / "jx")
    run_cfg, model = load_model(tmp_path / "jx")
    ids = text_batch(rows=2, length=33)
    torch_loss, expected = torch_grads(hf_model, ids)
    jax_loss, grads = jaxlm_grads(model, ids)
    assert abs(jax_loss - torch_loss) < 1e-5, (jax_loss, torch_loss)
    got = in_hf_names(run_cfg.model, grads)
    assert sorted(got) == sorted(expected)
    for name in expected:
        scale = float(np.abs(expected[name]).max())
        assert scale > 1e-6, f"{name}: a zero gradient tests nothing"
        np.testing.assert_allclose(got[name], expected[name], atol=ATOL, rtol=0, err_msg=name)
