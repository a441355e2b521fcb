"""Tokenizers: training with byte fallback, round trips, tiktoken-style BPE, bad files, vocab checks."""

from collections import Counter
from pathlib import Path

import pytest
import regex
import tiktoken

from jaxlm.assets import ASSETS_DIR
from jaxlm.cli.main import main
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.tokenizer import (
    LLAMA3_PATTERN,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    check_vocab,
    llama3_special_tokens,
    load_tokenizer,
)
from jaxlm.tokenizer.train import train_sentencepiece

TRAIN = ASSETS_DIR / "corpus" / "train"
HELD_BACK = ASSETS_DIR / "corpus" / "valid" / "as_you_like_it.txt"
UNSEEN = ["café naïve façade", "日本語のテキスト", "emoji 🎭🗡️ and ‘curly’ “quotes” — dash", "Ωμέγα Привет",
          "   leading spaces", "trailing spaces   ", "tab\there", "digits 1234567890", "\u00a0nbsp"]


@pytest.fixture(scope="module")
def small_spm(tmp_path_factory) -> SentencePieceTokenizer:
    out = tmp_path_factory.mktemp("spm")
    return train_sentencepiece([TRAIN / "macbeth.txt", TRAIN / "twelfth_night.txt"], out, vocab_size=400)


def test_trained_tokenizer_round_trips_every_line_of_a_held_back_play(small_spm):
    lines = HELD_BACK.read_text().split("\n")
    assert len(lines) > 3000
    bad = [line for line in lines if small_spm.decode(small_spm.encode(line)) != line]
    assert bad == []
    for text in UNSEEN:
        ids = small_spm.encode(text)
        assert small_spm.decode(ids) == text
    # unseen characters go through byte pieces <0x00>..<0xFF> (ids 4..259: unk, bos, eos, pad come first)
    ids = small_spm.encode("日")
    assert [small_spm.processor.id_to_piece(i) for i in ids if 4 <= i < 260] == ["<0xE6>", "<0x97>", "<0xA5>"]


def test_training_is_deterministic_and_sized(tmp_path, small_spm):
    again = train_sentencepiece([TRAIN / "macbeth.txt", TRAIN / "twelfth_night.txt"], tmp_path, vocab_size=400)
    assert (tmp_path / "tokenizer.model").read_bytes() == small_spm._proto
    assert (again.vocab_size, again.bos_id, again.eos_id, again.pad_id) == (400, 1, 2, 3)


def test_encode_flags_batch_and_save_load(tmp_path, small_spm):
    text = "To be, or not to be"
    plain = small_spm.encode(text)
    assert small_spm.encode(text, add_bos=True, add_eos=True) == [1] + plain + [2]
    assert small_spm.encode_batch([text, "Exeunt"], add_eos=True) == [plain + [2], small_spm.encode("Exeunt") + [2]]
    paths = small_spm.save(tmp_path / "saved")
    assert [p.name for p in paths] == ["tokenizer.model"]
    again = load_tokenizer(tmp_path / "saved")
    assert isinstance(again, SentencePieceTokenizer) and again.encode(text) == plain


def test_bundled_tokenizer_matches_the_tiny_configs(repo_root):
    import yaml

    tok = load_tokenizer("bundled:tokenizer")
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == ("sentencepiece", 2048, 1, 2, 3)
    for name in ("tiny_layerwise", "tiny_uniform"):
        check_vocab(yaml.safe_load((repo_root / "configs" / f"{name}.yaml").read_text())["model"]["vocab_size"], tok)
    text = HELD_BACK.read_text()
    assert tok.decode(tok.encode(text)) == text
    assert len(text) / len(tok.encode(text)) > 2.0  # merges learned: well over a byte per token


def test_cli_trains_a_tokenizer(tmp_path, capsys):
    assert main(["tokenizer", "train", str(TRAIN / "macbeth.txt"), "--vocab-size", "400",
                 "--output", str(tmp_path)]) == 0
    assert load_tokenizer(tmp_path).vocab_size == 400
    assert main(["tokenizer", "train", str(tmp_path / "nope"), "--vocab-size", "320", "--output",
                 str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_too_small_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(JaxlmError, match="sentencepiece training failed"):
        train_sentencepiece([TRAIN / "macbeth.txt"], tmp_path, vocab_size=100)


# -- tiktoken-style BPE ----------------------------------------------------------------------------

def learn_ranks(text: str, merges: int) -> dict[bytes, int]:
    """A plain byte-level BPE (most frequent pair first) over Llama 3's pre-split words."""
    words = Counter(tuple(bytes([b]) for b in w.encode()) for w in regex.findall(LLAMA3_PATTERN, text))
    ranks = {bytes([i]): i for i in range(256)}
    for _ in range(merges):
        pairs = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[a, b] += c
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks.setdefault(a + b, len(ranks))
        merged = Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += c
        words = merged
    return ranks


@pytest.fixture(scope="module")
def ranks() -> dict[bytes, int]:
    return learn_ranks((TRAIN / "macbeth.txt").read_text()[:30000], merges=120)


def write_ranks(path: Path, ranks: dict[bytes, int]) -> Path:
    import base64

    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return path


def test_tiktoken_rank_file_with_llama3_specials(tmp_path, ranks):
    # Llama 3 names its rank file tokenizer.model too: the loader must tell it from sentencepiece.
    tok = load_tokenizer(write_ranks(tmp_path / "tokenizer.model", ranks))
    assert isinstance(tok, TiktokenTokenizer)
    n = len(ranks)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (n + 256, n, n + 1)
    assert llama3_special_tokens(128000)["<|begin_of_text|>"] == 128000
    assert llama3_special_tokens(128000)["<|eot_id|>"] == 128009
    reference = tiktoken.Encoding("ref", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                  special_tokens=llama3_special_tokens(n))
    for line in HELD_BACK.read_text().split("\n")[:2000] + UNSEEN:
        ids = tok.encode(line)
        assert ids == reference.encode_ordinary(line)
        assert tok.decode(ids) == line
    assert len(tok.encode("the king and the queen")) < len("the king and the queen".encode())  # merges apply
    # special-token text inside a document stays text, never a control id
    ids = tok.encode("<|begin_of_text|>", add_bos=True, add_eos=True)
    assert ids[0] == n and ids[-1] == n + 1 and n not in ids[1:-1]


def test_tiktoken_save_load_with_custom_specials(tmp_path, ranks):
    n = len(ranks)
    specials = {"<s>": n, "</s>": n + 1, "<pad>": n + 2}
    tok = TiktokenTokenizer(ranks, special_tokens=specials, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    names = sorted(p.name for p in tok.save(tmp_path))
    assert names == ["jaxlm_tokenizer.json", "tokenizer.model"]
    again = load_tokenizer(tmp_path)
    assert (again.vocab_size, again.bos_id, again.eos_id, again.pad_id) == (n + 3, n, n + 1, n + 2)
    text = "Double, double toil and trouble; 火 burn"
    assert again.encode_batch([text, text], add_bos=True) == [[n] + tok.encode(text)] * 2
    with pytest.raises(JaxlmError, match="not among the special tokens"):
        TiktokenTokenizer(ranks, special_tokens=specials, bos_token="<|begin_of_text|>")


# -- bad files and vocab agreement -----------------------------------------------------------------

def test_bad_tokenizer_files_are_clear_errors(tmp_path):
    junk = tmp_path / "junk" / "tokenizer.model"
    junk.parent.mkdir()
    junk.write_bytes(b"\x00\x01garbage that is no protobuf\xff" * 20)
    with pytest.raises(JaxlmError, match="is not a sentencepiece model"):
        load_tokenizer(junk)
    text = tmp_path / "notes.txt"
    text.write_text("hello world\nthis is not a rank file\n")
    with pytest.raises(JaxlmError, match="not a sentencepiece model"):
        load_tokenizer(text)
    half = tmp_path / "half.tiktoken"
    half.write_text("IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(JaxlmError, match="line 2 is not"):
        load_tokenizer(half)
    with pytest.raises(JaxlmError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JaxlmError, match="no tokenizer in"):
        load_tokenizer(tmp_path / "empty")


class _Sized:
    def __init__(self, n):
        self.vocab_size = n


def test_vocab_check():
    check_vocab(2048, _Sized(2048))
    check_vocab(32064, _Sized(32011))  # Phi-3: 32011 ids (tokenizer.json) padded to a multiple of 64
    check_vocab(32064, _Sized(32000))  # Phi-3 with only its tokenizer.model (32000 pieces)
    check_vocab(2048 + 127, _Sized(2048))
    with pytest.raises(ConfigError, match="pad it by fewer than 128 rows"):
        check_vocab(2048 + 128, _Sized(2048))
    check_vocab(128256, _Sized(128256))
    with pytest.raises(ConfigError, match="model vocab_size 2000 does not match the tokenizer's 2048"):
        check_vocab(2000, _Sized(2048))
    with pytest.raises(ConfigError, match="set model.vocab_size=2048"):
        check_vocab(4096, _Sized(2048))


def test_a_tiktoken_configured_run_trains_validates_and_reports_stats_with_that_tokenizer(tmp_path, capsys, ranks):
    """A folder holding a tokenizer.json *and* a tiktoken tokenizer.model: auto would open the
    tokenizer.json, data.tokenizer_kind=tiktoken says the rank file, and every command must agree."""
    import json

    import yaml

    from jaxlm.inference.api import load

    from hf_tokenizer_helpers import LLAMA3_SPECIALS, train_bpe

    folder = tmp_path / "tok"
    folder.mkdir()
    write_ranks(folder / "tokenizer.model", ranks)
    train_bpe(LLAMA3_SPECIALS, vocab_size=300, files=1).save(str(folder / "tokenizer.json"))
    assert load_tokenizer(folder).kind != "tiktoken"  # what ignoring tokenizer_kind would read
    tok = load_tokenizer(folder, "tiktoken")
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "inherit": str(ASSETS_DIR.parent / "configs" / "default.yaml"),
        "model": {"vocab_size": tok.vocab_size, "num_layers": 2, "model_dim": 64},
        "data": {"tokenizer": str(folder), "tokenizer_kind": "tiktoken"},
        "train": {"steps": 2, "batch_size": 8, "seq_len": 32, "log_every": 1, "eval_every": 2, "eval_batches": 2,
                  "out_dir": str(out), "sample_prompt": ""},
        "checkpoint": {"every": 2}, "mesh": {"data": -1}}))
    capsys.readouterr()
    assert main(["data", "stats", str(cfg), "--max-batches", "2"]) == 0
    assert f"(tiktoken, {tok.vocab_size} ids" in capsys.readouterr().out
    assert main(["train", str(cfg)]) == 0, capsys.readouterr().err
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2 and record["val_tokens"] == 2 * 8 * 32
    reloaded = load(out).tokenizer
    assert reloaded.kind == "tiktoken" and reloaded.vocab_size == tok.vocab_size
    sample = (HELD_BACK.read_text())[:2000]
    assert reloaded.encode(sample) == tok.encode(sample)
