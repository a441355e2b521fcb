"""Golden cached generation: tiny models made by transformers (or jaxlm.torch for OpenELM), brought
in with from-hf, decode greedily with jaxlm's engine exactly as the reference's `generate` does,
token for token, from prompts on both sides of each boundary (LongRoPE's switch point, Phi-3's
sliding window).

Random models from transformers' init (std 0.02) attend almost uniformly, so positions barely
move the argmax; the q and k rows of the fused projections are scaled x5 so that RoPE matters
(with that, the engine before the LongRoPE cache rebuild matched 17 of 40 tokens here).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from convert_helpers import VOCAB, text_batch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm.checkpoint import load_model  # noqa: E402
from jaxlm.convert import from_hf  # noqa: E402
from jaxlm.inference import Engine  # noqa: E402

NO_STOP = [-5]  # never a token: every row runs to max_new_tokens, as generate(eos_token_id=None)
ORIGINAL = 64  # Phi-3 LongRoPE: original_max_position_embeddings, the switch point
NEW = 40


def sharpen_attention(model, q_k_rows: int, scale: float = 5.0) -> None:
    """Scale the first q_k_rows output rows (q and k) of every layer's fused qkv_proj."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.weight[:q_k_rows] *= scale


def hf_generate(model, prompts: list[list[int]], n: int) -> list[list[int]]:
    """transformers' cached greedy generate, left-padded as transformers batches; the new ids per row."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return [row[width:].tolist() for row in out]


def import_hf(model, root) -> Engine:
    model.save_pretrained(root / "hf")
    from_hf(root / "hf", root / "jx")
    return Engine(load_model(root / "jx")[1])


@pytest.fixture(scope="module")
def phi3_longrope(tmp_path_factory):
    """A tiny Phi-3 with LongRoPE switching at 64 tokens; (transformers model, jaxlm engine, prompts, reference)."""
    torch.manual_seed(1)
    cfg = transformers.Phi3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, original_max_position_embeddings=ORIGINAL,
        rope_scaling={"type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
                      "long_factor": [2.0 + 0.5 * i for i in range(8)]},
        pad_token_id=None, bos_token_id=1, eos_token_id=2)
    hf = transformers.Phi3ForCausalLM(cfg).eval()
    sharpen_attention(hf, 2 * 64)
    engine = import_hf(hf, tmp_path_factory.mktemp("phi3_longrope"))
    ids = text_batch(3, 80)
    prompts = {n: ids[i, :n].tolist() for i, n in enumerate((48, 60, 70))}  # crossing at 16, at 4, already past

    @functools.cache
    def reference(n: int) -> list[int]:  # transformers at batch 1
        return hf_generate(hf, [prompts[n]], NEW)[0]

    return hf, engine, prompts, reference


def test_longrope_crossing_the_switch_inside_one_decode_equals_transformers(phi3_longrope):
    _, engine, prompts, reference = phi3_longrope
    got = engine.generate([prompts[48]], NEW, stop_tokens=NO_STOP).tokens[0]
    assert got == reference(48)  # 40 of 40; the token at position 65 is the first with long factors


def test_longrope_batch_rows_on_both_sides_switch_each_at_their_own_length(phi3_longrope):
    """One batch: a 48-token row (switches at its new token 16, then stops at a stop token), a 60-token
    row (switches at token 4) and a 70-token prompt already past the switch, streamed. Every row
    equals transformers' batch-1 generate. (transformers' own left-padded batch switches every row
    at the longest row's length instead: docs/inference.md.)"""
    _, engine, prompts, reference = phi3_longrope
    refs = [reference(n) for n in (48, 60, 70)]
    cut = next(k for k in range(20, NEW) if refs[0][k] not in refs[0][:k])
    streamed = []
    out = engine.generate([prompts[48], prompts[60], prompts[70]], NEW,
                          stop_tokens=[[refs[0][cut]], NO_STOP, NO_STOP],
                          on_token=lambda step, tok, done: streamed.append(tok.tolist()))
    assert out.tokens[2] == refs[2]  # the prompt already past the switch: long factors from the prefill on
    assert out.tokens[:2] == [refs[0][:cut], refs[1]]  # crossing inside the decode, each at its own step
    assert out.finish_reasons == ["stop", "length", "length"]
    for row in range(3):
        assert [t[row] for t in streamed][:len(out.tokens[row])] == out.tokens[row]


WINDOW = 32


@pytest.fixture(scope="module")
def phi3_window(tmp_path_factory):
    """Phi-3 with both boundaries: a 32-token sliding window and LongRoPE switching at 64 tokens."""
    torch.manual_seed(4)
    cfg = transformers.Phi3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, original_max_position_embeddings=ORIGINAL,
        rope_scaling={"type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
                      "long_factor": [2.0 + 0.5 * i for i in range(8)]}, sliding_window=WINDOW,
        pad_token_id=None, bos_token_id=1, eos_token_id=2)
    hf = transformers.Phi3ForCausalLM(cfg).eval()
    sharpen_attention(hf, 2 * 64)
    return hf, import_hf(hf, tmp_path_factory.mktemp("phi3_window"))


def test_sliding_window_logits_equal_transformers_at_twice_the_window(phi3_window):
    import dataclasses

    from flax import nnx

    from jaxlm.model import abstract_model

    hf, engine = phi3_window
    model = nnx.merge(engine.graphdef, engine.state)
    assert model.cfg.sliding_window == WINDOW
    ids = text_batch(2, 2 * WINDOW)
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    diff = np.abs(np.asarray(model(ids)) - ref).max()
    assert diff <= 1e-4, diff
    full = nnx.merge(nnx.graphdef(abstract_model(dataclasses.replace(model.cfg, sliding_window=None))),
                     nnx.state(model))  # the same weights attending to everything
    assert np.abs(np.asarray(full(ids)) - ref).max() > 100 * 1e-4  # so the window is what matched


def test_sliding_window_and_longrope_cached_generation_equals_transformers(phi3_window):
    """Prompts of 20 (crosses the window while decoding), 48 (past the window; crosses the LongRoPE
    switch while decoding) and 70 tokens (past both): batch 1 and one ragged batch of 3 equal
    transformers' batch-1 generate."""
    hf, engine = phi3_window
    ids = text_batch(3, 80)
    prompts = [ids[0, :20].tolist(), ids[1, :48].tolist(), ids[2, :70].tolist()]
    refs = [hf_generate(hf, [p], NEW)[0] for p in prompts]
    assert engine.generate(prompts[:1], NEW, stop_tokens=NO_STOP).tokens == refs[:1]
    assert engine.generate(prompts, NEW, stop_tokens=NO_STOP).tokens == refs


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    """A tiny Llama 3.1 (GQA 4/2, llama3 RoPE scaling from a 16-token original context)."""
    torch.manual_seed(2)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.q_proj.weight *= 5.0
            layer.self_attn.k_proj.weight *= 5.0
    return hf, import_hf(hf, tmp_path_factory.mktemp("llama3"))


def test_llama3_scaling_cached_generation_equals_transformers_at_batch_1_and_3(llama3):
    hf, engine = llama3
    ids = text_batch(3, 48)
    prompts = [ids[0, :40].tolist(), ids[1, :10].tolist(), ids[2, :25].tolist()]  # around the 16-token context
    single = hf_generate(hf, prompts[:1], NEW)
    assert engine.generate(prompts[:1], NEW, stop_tokens=NO_STOP).tokens == single
    batch = hf_generate(hf, prompts, NEW)  # left-padded: positions from the attention mask
    assert batch[0] == single[0]
    assert engine.generate(prompts, NEW, stop_tokens=NO_STOP).tokens == batch


def test_openelm_cached_generation_equals_jaxlm_torch_at_batch_1_and_3(tmp_path):
    """OpenELM through the independent PyTorch reader: a model with jaxlm.torch's random weights
    (layerwise sizes, QK-norm, tied) saved in Apple's layout, imported, decoded by both."""
    import json

    from safetensors.torch import save_file

    from jaxlm.config import load_run_config
    from jaxlm.convert import openelm
    from jaxlm.torch.openelm import OpenELM, OpenELMSizes

    sizes = load_run_config("tiny_layerwise", ["model.model_dim=64", "model.num_layers=3", "model.head_dim=16",
                                               "model.ffn_dim_divisor=16", f"model.vocab_size={VOCAB}"]).model
    config = openelm.config_to_hf(sizes)  # Apple's config.json fields, no weights
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    torch.manual_seed(3)
    tm = OpenELM(OpenELMSizes.from_config(config)).eval()
    assert len(set(zip(tm.sizes.num_query_heads, tm.sizes.ffn_dims))) == 3 and tm.sizes.qk_norm and tm.sizes.tied
    with torch.no_grad():
        for name, p in tm.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else torch.randn_like(p) * p.shape[-1] ** -0.5)
        for layer in tm.transformer.layers:  # sharper attention, so positions matter
            q_k = (layer.attn.nq + layer.attn.nkv) * layer.attn.hd
            layer.attn.qkv_proj.weight[:q_k] *= 3.0
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(tmp_path / "hf" / "model.safetensors"))
    from_hf(tmp_path / "hf", tmp_path / "jx")
    engine = Engine(load_model(tmp_path / "jx")[1])
    ids = text_batch(3, 48)
    prompts = [ids[0, :31].tolist(), ids[1, :12].tolist(), ids[2, :33].tolist()]  # both sides of a 32 bucket
    refs = [tm.generate(torch.tensor([p]), NEW)[0].tolist() for p in prompts]
    assert engine.generate(prompts[:1], NEW, stop_tokens=NO_STOP).tokens == refs[:1]
    assert engine.generate(prompts, NEW, stop_tokens=NO_STOP).tokens == refs
