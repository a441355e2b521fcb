"""An OpenELM export loads in transformers with the code it carries (`trust_remote_code=True`):
AutoConfig, AutoModelForCausalLM, logits equal to jaxlm's, and `generate` with its KV cache giving
jaxlm's greedy tokens (and transformers' own without the cache), for tied and untied heads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convert_helpers import VOCAB, save_jaxlm_model, text_batch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm.convert import hf_code, to_hf  # noqa: E402

TOL = 1e-4  # max abs float32 logit difference (measured: ~6e-6)
# 3 layers with different head counts (2/1, 4/2, 4/2: GQA) and FFN widths; QK-norm.
LAYERWISE = ["model.model_dim=64", "model.num_layers=3", "model.head_dim=16", "model.ffn_dim_divisor=16",
             f"model.vocab_size={VOCAB}", "model.attention_impl=xla", "model.norm_impl=xla"]
CODE = ("configuration_openelm.py", "modeling_openelm.py")


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def export(request, tmp_path_factory):
    tied = request.param
    root = tmp_path_factory.mktemp("hf_openelm")
    run_cfg, model = save_jaxlm_model(root / "jx", "tiny_layerwise", LAYERWISE + [f"model.tie_embeddings={tied}"],
                                      seed=5)
    assert len(set(run_cfg.model.layer_specs)) == 3 and run_cfg.model.qk_norm
    out = root / f"openelm_{'tied' if tied else 'untied'}"  # distinct names: transformers caches code per folder
    to_hf(root / "jx", out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    return out, run_cfg, model, hf


def test_export_carries_versioned_code_and_auto_config_reads_it(export):
    out, run_cfg, _, _ = export
    for name in CODE:
        assert (out / name).read_text() == hf_code.code_path(name).read_text()
        assert hf_code.code_version(name) == hf_code.code_version(CODE[0])
    config = json.loads((out / "config.json").read_text())
    assert config["jaxlm_code_version"] == hf_code.code_version("modeling_openelm.py")
    auto = transformers.AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert type(auto).__name__ == "OpenELMConfig"
    specs = run_cfg.model.layer_specs
    assert auto.num_query_heads == [s.num_query_heads for s in specs]
    assert auto.num_kv_heads == [s.num_kv_heads for s in specs]
    assert auto.ffn_dims() == [s.ffn_dim for s in specs]
    assert auto.num_hidden_layers == 3 and auto.share_input_output_layers == run_cfg.model.tie_embeddings


def test_auto_model_logits_equal_jaxlm(export):
    _, run_cfg, model, hf = export
    assert (hf.lm_head is None) == run_cfg.model.tie_embeddings
    ids = text_batch()
    with torch.no_grad():
        out = hf(torch.tensor(ids, dtype=torch.long), labels=torch.tensor(ids, dtype=torch.long))
    jax_logits = np.asarray(model(ids))
    diff = np.abs(jax_logits - out.logits.numpy()).max()
    assert diff <= TOL, diff
    # The loss is next-token cross-entropy over the logits.
    logp = jax_logits[:, :-1] - np.log(np.exp(jax_logits[:, :-1]).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, ids[:, 1:, None], -1).mean()
    assert abs(float(out.loss) - nll) <= 1e-4


def test_generate_with_cache_equals_jaxlm_and_no_cache(export):
    from jaxlm.inference import LanguageModel
    from jaxlm.tokenizer import load_tokenizer

    _, _, model, hf = export
    ids = text_batch()
    prompt = [int(t) for t in ids[0, :12]]
    jax_new = LanguageModel(model, load_tokenizer("bundled:tokenizer")).generate_ids(
        [prompt], 32, stop_tokens=[], temperature=0.0).tokens[0]
    kw = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False)
    with torch.no_grad():
        cached = hf.generate(torch.tensor([prompt]), use_cache=True, **kw)[0, 12:].tolist()
        uncached = hf.generate(torch.tensor([prompt]), use_cache=False, **kw)[0, 12:].tolist()
    assert len(cached) == 32 and cached == jax_new and uncached == cached


def test_left_padded_batch_generates_each_row_as_alone(export):
    _, _, _, hf = export
    ids = text_batch()
    rows = [[int(t) for t in ids[0, :12]], [int(t) for t in ids[1, :5]]]
    batch = torch.zeros((2, 12), dtype=torch.long)
    mask = torch.zeros((2, 12), dtype=torch.long)
    for r, row in enumerate(rows):  # left padding, as transformers pads for generation
        batch[r, 12 - len(row):], mask[r, 12 - len(row):] = torch.tensor(row), 1
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        together = hf.generate(batch, attention_mask=mask, **kw)[:, 12:].tolist()
        alone = [hf.generate(torch.tensor([row]), **kw)[0, len(row):].tolist() for row in rows]
    assert together == alone
