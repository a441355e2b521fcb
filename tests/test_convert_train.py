"""A checkpoint written by `jaxlm train` converts to HF, and transformers (plain LlamaForCausalLM)
generates the same greedy tokens as jaxlm's generation engine."""

from __future__ import annotations

import pytest

import convert_helpers  # noqa: F401  (offline HF settings)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm.cli.main import main  # noqa: E402

UNIFORM = ["model.model_dim=64", "model.num_layers=2", "model.head_dim=16", "model.num_query_heads=4",
           "model.num_kv_heads=2", "model.ffn_dim=128", "model.attention_impl=xla", "model.norm_impl=xla",
           "train.steps=4", "train.batch_size=8", "train.seq_len=32", "train.log_every=2", "train.warmup_steps=1",
           'train.sample_prompt=""', "checkpoint.every=4"]


def test_trained_run_generates_the_same_greedy_text_in_transformers(tmp_path):
    from jaxlm.inference import load
    from jaxlm.tokenizer import load_tokenizer

    run_dir = tmp_path / "run"
    overrides = [a for o in UNIFORM + [f"train.out_dir={run_dir}"] for a in ("--set", o)]
    assert main(["train", "tiny_uniform", *overrides]) == 0
    assert main(["convert", "to-hf", "--ckpt", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    tok = load_tokenizer(tmp_path / "hf")  # the run's tokenizer travelled with the weights
    prompt = tok.encode("To be, or not to be, that is the question:", add_bos=True)
    lm = load(run_dir)
    jax_new = lm.generate_ids([prompt], 24, temperature=0.0).tokens[0]
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
    eos = tok.eos_id
    hf_new = out[: out.index(eos)] if eos in out else out
    assert jax_new == hf_new and len(jax_new) > 0
    assert lm.tokenizer.decode(jax_new) == tok.decode(hf_new)


@pytest.mark.slow  # covered by the test above (train -> to-hf), test_torch_openelm and test_hf_openelm
def test_trained_layerwise_run_matches_jaxlm_torch(tmp_path):
    from jaxlm.inference import load
    from jaxlm.tokenizer import load_tokenizer
    from jaxlm.torch import load_openelm

    run_dir = tmp_path / "run"
    layerwise = ["model.model_dim=64", "model.num_layers=3", "model.head_dim=16", "model.ffn_dim_divisor=16",
                 "model.attention_impl=xla", "model.norm_impl=xla"] + UNIFORM[8:]
    overrides = [a for o in layerwise + [f"train.out_dir={run_dir}"] for a in ("--set", o)]
    assert main(["train", "tiny_layerwise", *overrides]) == 0
    assert main(["convert", "to-hf", "--ckpt", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    prompt = load_tokenizer(tmp_path / "hf").encode("Friends, Romans, countrymen,", add_bos=True)
    jax_new = load(run_dir).generate_ids([prompt], 32, stop_tokens=[], temperature=0.0).tokens[0]
    torch_new = load_openelm(tmp_path / "hf").generate(torch.tensor([prompt]), 32)[0].tolist()
    assert jax_new == torch_new
    # The export's own model code (trust_remote_code), with transformers' KV cache.
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert out[0, len(prompt):].tolist() == jax_new
