"""Hugging Face tokenizers both ways: a folder with only tokenizer.json converts with its tokenizer
(same ids and text as AutoTokenizer on every line of a held-back play), and every jaxlm tokenizer
kind exports files that AutoTokenizer reads with jaxlm's ids."""

from __future__ import annotations

import json

import pytest

from convert_helpers import save_jaxlm_model
from hf_tokenizer_helpers import LLAMA3_SPECIALS, TRAIN, held_back_lines, save_fast_tokenizer, tiny_llama, train_bpe

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")

from jaxlm.convert import from_hf, to_hf  # noqa: E402
from jaxlm.errors import JaxlmError  # noqa: E402
from jaxlm.tokenizer import load_tokenizer  # noqa: E402
from jaxlm.tokenizer.hf_export import write_hf_tokenizer  # noqa: E402


def assert_same_as_auto(tok, auto, lines, bos: bool = True) -> None:
    """jaxlm and AutoTokenizer agree on ids (with and without BOS) and on decoded text, line by line."""
    for line in lines:
        ids = tok.encode(line)
        assert ids == auto(line, add_special_tokens=False).input_ids, line
        if bos:
            assert tok.encode(line, add_bos=True) == auto(line).input_ids, line
        assert tok.decode(ids) == auto.decode(ids), line


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny transformers Llama with only a tokenizer.json (+ tokenizer_config.json), Llama-3-style."""
    root = tmp_path_factory.mktemp("hf_tok")
    backend = train_bpe(LLAMA3_SPECIALS)
    save_fast_tokenizer(backend, root / "hf", bos="<|begin_of_text|>", eos="<|end_of_text|>")
    tiny_llama(root / "hf", backend.get_vocab_size(), bos_id=0, eos_id=1)
    assert not (root / "hf" / "tokenizer.model").exists()
    return root


def test_tokenizer_json_folder_converts_and_encodes_as_auto_tokenizer(llama_folder):
    import jaxlm

    root = llama_folder
    from_hf(root / "hf", root / "jx")
    lm = jaxlm.load(root / "jx")
    assert lm.tokenizer.kind == "hf" and (lm.tokenizer.bos_id, lm.tokenizer.eos_id) == (0, 1)
    assert_same_as_auto(lm.tokenizer, transformers.AutoTokenizer.from_pretrained(root / "hf"), held_back_lines())
    assert lm.generate("ROSALIND:", 4)  # the converted model generates text

    to_hf(root / "jx", root / "back")
    assert (root / "back" / "tokenizer.json").read_text() == (root / "hf" / "tokenizer.json").read_text()
    assert_same_as_auto(lm.tokenizer, transformers.AutoTokenizer.from_pretrained(root / "back"), held_back_lines())


def test_sentencepiece_export_reads_in_auto_tokenizer(tmp_path):
    save_jaxlm_model(tmp_path / "jx", "tiny_uniform", ["model.num_layers=1", "model.model_dim=32",
                                                       "model.num_query_heads=2", "model.num_kv_heads=1",
                                                       "model.head_dim=16", "model.ffn_dim=32"])
    to_hf(tmp_path / "jx", tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer.model").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>" and config["eos_token"] == "</s>" and config["model_max_length"] > 0
    spm = load_tokenizer("bundled:tokenizer")
    lines = held_back_lines() + ["  two  spaces", " lead", "tab\tx", "émoji 🤗 ok", "trailing  "]
    assert_same_as_auto(spm, transformers.AutoTokenizer.from_pretrained(tmp_path / "hf"), lines)


def test_tiktoken_export_reads_in_auto_tokenizer(tmp_path):
    from test_tokenizer import learn_ranks

    from jaxlm.tokenizer import TiktokenTokenizer

    tok = TiktokenTokenizer(learn_ranks((TRAIN / "macbeth.txt").read_text()[:20000], merges=100))
    write_hf_tokenizer(tok, tmp_path, model_max_length=512)
    assert_same_as_auto(tok, transformers.AutoTokenizer.from_pretrained(tmp_path), held_back_lines())
    back = load_tokenizer(tmp_path)  # jaxlm reads the export back through tokenizers
    assert back.kind == "hf" and back.bos_id == tok.bos_id and back.eos_id == tok.eos_id
    assert back.encode_special("<|begin_of_text|>Hi<|eot_id|>") == tok.encode_special("<|begin_of_text|>Hi<|eot_id|>")
    assert tok.encode_special("a<|eot_id|>")[-1] == tok.special_tokens["<|eot_id|>"]


def test_tokenizer_json_roles_and_bad_files(tmp_path):
    backend = train_bpe(LLAMA3_SPECIALS, vocab_size=300, files=1)
    (tmp_path / "tokenizer.json").write_text(backend.to_str())
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [4, 1]}))
    tok = load_tokenizer(tmp_path)  # no tokenizer_config.json: ids from generation_config.json
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 4, 4)
    assert tok.encode_special("hi<|eot_id|>")[-1] == 4 and "<|eot_id|>" in tok.special_tokens
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|nope|>"}))
    with pytest.raises(JaxlmError, match="<|nope|>.*not in its tokenizer.json vocabulary"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(JaxlmError, match="tokenizer_config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(JaxlmError, match="is not a tokenizers tokenizer.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("adds_bos", [True, False], ids=["post-processor-adds-bos", "no-bos"])
def test_string_apis_add_bos_as_the_tokenizer_does(tmp_path, adds_bos):
    """generate / perplexity / `jaxlm eval` ids equal AutoTokenizer(text)'s whether or not the
    tokenizer.json's post-processor adds BOS, and perplexity equals transformers' on those ids."""
    import math

    import torch

    import jaxlm

    backend = train_bpe(LLAMA3_SPECIALS, files=1)
    if not adds_bos:
        backend.post_processor = None
    save_fast_tokenizer(backend, tmp_path / "hf", bos="<|begin_of_text|>", eos="<|end_of_text|>")
    hf_model = tiny_llama(tmp_path / "hf", backend.get_vocab_size(), bos_id=0, eos_id=1)
    from_hf(tmp_path / "hf", tmp_path / "jx")
    lm = jaxlm.load(tmp_path / "jx")
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "The quality of mercy is not strained; it droppeth as the gentle rain from heaven."
    expected = auto(text).input_ids
    assert (expected[0] == 0) == adds_bos
    assert lm.tokenizer.adds_bos == adds_bos
    assert lm.encode_prompts([text])[0] == expected  # generate / stream
    assert lm.tokenizer.encode_input(text) == expected  # jaxlm eval, perplexity
    with torch.no_grad():
        hf_loss = hf_model(torch.tensor([expected]), labels=torch.tensor([expected])).loss.item()
    assert lm.perplexity(text) == pytest.approx(math.exp(hf_loss), rel=1e-4)
