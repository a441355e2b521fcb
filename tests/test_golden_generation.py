"""Golden cached generation: tiny models made by transformers (or jaxlm.torch for OpenELM), brought
in with from-hf, decode greedily with jaxlm's engine exactly as the reference's `generate` does,
token for token, from prompts on both sides of each boundary (LongRoPE's switch point).

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
