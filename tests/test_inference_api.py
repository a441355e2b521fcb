"""The notebook API and CLI on a tiny saved model with the bundled tokenizer: generate on strings,
streaming equals generate, log-probabilities against the forward pass, perplexity, bad input."""

import math

import jax
import numpy as np
import pytest
from inference_util import random_model

import jaxlm
from jaxlm.assets import resolve_path
from jaxlm.checkpoint import save_model
from jaxlm.cli.main import main
from jaxlm.config import RunConfig
from jaxlm.errors import JaxlmError
from jaxlm.inference import LanguageModel, load
from jaxlm.model import ModelConfig

TOKENIZER = resolve_path("bundled:tokenizer/tokenizer.model")
CFG = ModelConfig(name="tiny_api", vocab_size=2048, model_dim=64, num_layers=2, head_dim=16,
                  num_query_heads=(2, 4), num_kv_heads=(1, 2), ffn_dim=(64, 128), max_context=64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "model"
    save_model(path, RunConfig(model=CFG), random_model(CFG, seed=1), extra_files=[TOKENIZER])
    return path


@pytest.fixture(scope="module")
def lm(model_dir):
    return jaxlm.load(model_dir)


def test_generate_strings_single_and_batch(lm):
    one = lm.generate("To be, or not to be", max_new_tokens=8)
    assert isinstance(one, str) and one
    ids = lm.tokenizer.encode("To be, or not to be", add_bos=True)
    out = lm.generate_ids([ids], 8)
    assert one == lm.continuation_text(ids, out.tokens[0])
    batch = lm.generate(["Friends", "To be, or not to be"], max_new_tokens=8)
    assert batch[1] == one  # a row's result does not depend on its batch


def test_stream_yields_pieces_that_join_to_generate(lm):
    kw = dict(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=4)
    pieces = list(lm.stream("Now is the winter", **kw))
    assert len(pieces) > 1
    assert "".join(pieces) == lm.generate("Now is the winter", **kw)


def test_closing_a_stream_early_stops_it(lm):
    gen = lm.stream("Now is the winter", max_new_tokens=40)
    first = next(gen)
    gen.close()  # must not hang or raise
    assert first


def test_logprobs_match_an_independent_log_softmax(lm):
    text = "O Romeo, Romeo! wherefore art thou Romeo?"
    pairs = lm.logprobs(text)
    ids = lm.tokenizer.encode(text, add_bos=True)
    logits = np.asarray(lm.model(jax.numpy.asarray([ids])), np.float64)[0]
    ref = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    expected = [ref[i, ids[i + 1]] for i in range(len(ids) - 1)]
    assert [p for p, _ in pairs] == [lm.tokenizer.decode([t]) for t in ids[1:]]
    np.testing.assert_allclose([v for _, v in pairs], expected, atol=1e-4)
    assert lm.score(text) == pytest.approx(sum(expected), abs=1e-3)


def test_perplexity_of_a_file_equals_exp_mean_nll(lm, tmp_path):
    text = "Friends, Romans, countrymen, lend me your ears. " * 6
    f = tmp_path / "t.txt"
    f.write_text(text)
    ids = lm.tokenizer.encode(text, add_bos=True)
    # windows of seq_len + 1 = 33 tokens, overlapping by one token
    nll, n = 0.0, 0
    for i in range(0, len(ids) - 1, 32):
        window = ids[i:i + 33]
        if len(window) >= 2:
            lp = lm.scorer.token_logprobs(window)
            nll -= float(lp.sum())
            n += len(lp)
    assert n == len(ids) - 1
    assert lm.perplexity(path=f, seq_len=32) == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert lm.perplexity(text, seq_len=32) == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_perplexity_compiles_windows_no_wider_or_taller_than_the_text(lm, monkeypatch):
    """A short text on a longer context is scored in a (1, 32)-target call, not the whole context and
    batch; a longer one in full windows and a batch of the windows it has; the value is unchanged."""
    shapes = []
    score = lm.scorer._logprobs
    monkeypatch.setattr(lm.scorer, "_logprobs",
                        lambda state, ids, mask: shapes.append(ids.shape) or score(state, ids, mask))
    short = "Friends, Romans, countrymen."
    n = len(lm.tokenizer.encode_input(short))
    assert n <= 32
    lm.perplexity(short)
    assert shapes == [(1, 33)]  # 32 targets (the smallest bucket), one row: not (8, 64) for the context of 64
    long = "Friends, Romans, countrymen, lend me your ears. " * 12
    ids = lm.tokenizer.encode_input(long)
    shapes.clear()
    ppl = lm.perplexity(long, batch_size=8)
    windows = -(-(len(ids) - 1) // 63)
    assert 2 <= windows < 8 and shapes == [(1 << (windows - 1).bit_length(), 64)]
    lp = np.concatenate([lm.scorer.token_logprobs(ids[i:i + 64]) for i in range(0, len(ids) - 1, 63)])
    assert ppl == pytest.approx(math.exp(-lp.mean()), rel=1e-4)


def test_bad_inputs_give_clear_errors(lm, model_dir, tmp_path):
    with pytest.raises(JaxlmError, match="prompt 0 is empty"):
        lm.generate("")
    with pytest.raises(JaxlmError, match="over the model's context of 64"):
        lm.generate("To be, or not to be", max_new_tokens=60)
    with pytest.raises(JaxlmError, match="top_p must be in"):
        lm.generate("To be", top_p=1.5)
    with pytest.raises(JaxlmError, match="top_p must be in"):
        next(lm.stream("To be", top_p=0))
    with pytest.raises(JaxlmError, match="does not exist"):
        load(tmp_path / "no_such_model")
    with pytest.raises(JaxlmError, match="does not exist"):
        lm.perplexity(path=tmp_path / "missing.txt")


def test_tokenizer_model_vocab_mismatch_is_rejected(lm, tmp_path):
    from jaxlm.tokenizer.train import train_sentencepiece

    corpus = tmp_path / "c.txt"
    corpus.write_text(resolve_path("bundled:corpus/valid/comedy_of_errors.txt").read_text()[:60000])
    small = train_sentencepiece([corpus], tmp_path / "tok", 600)
    with pytest.raises(JaxlmError, match="vocab_size 2048 does not match the tokenizer's 600"):
        LanguageModel(lm.model, small)


def test_cli_generate_and_eval(model_dir, capsys):
    assert main(["generate", "--ckpt", str(model_dir), "--prompt", "To be", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("To be") and len(out) > len("To be\n")
    assert main(["eval", "--ckpt", str(model_dir), "--data", "bundled:corpus/valid/comedy_of_errors.txt",
                 "--seq-len", "63", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    ppl = float(out.split("perplexity ")[1].split()[0])
    assert 1 < ppl < 1e5


@pytest.mark.parametrize("argv, match", [
    (["generate", "--ckpt", "/no/such/dir", "--prompt", "x"], "does not exist"),
    (["generate", "--ckpt", "MODEL", "--prompt", "x", "--top-p", "2"], "top_p must be in"),
    (["generate", "--ckpt", "MODEL"], "give --prompt"),
    (["eval", "--ckpt", "MODEL", "--data", "/no/such.txt"], "does not exist"),
])
def test_cli_bad_input_exits_2_with_one_line(model_dir, capsys, argv, match):
    argv = [str(model_dir) if a == "MODEL" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and "Traceback" not in err


def test_scoring_picks_longrope_factors_per_row_not_from_the_padded_width():
    """A short row scored beside a row past original_max_position gets the same log-probs as alone."""
    import jax.numpy as jnp

    from jaxlm.inference.scoring import Scorer
    from jaxlm.model import ModelConfig, RopeScaling, build_model

    rs = RopeScaling(type="longrope", original_max_position=16, short_factor=(1.0, 1.0, 1.0, 1.0),
                     long_factor=(4.0, 8.0, 16.0, 32.0), factor=4.0)
    cfg = ModelConfig(vocab_size=61, model_dim=32, num_layers=2, head_dim=8, num_query_heads=4, num_kv_heads=2,
                      ffn_dim=64, max_context=64, rope_scaling=rs)
    model = build_model(cfg, seed=0)
    scorer = Scorer(model)

    def unpadded(tokens):  # the row alone, no padding: positions 0 .. n-2 decide the factors
        logp = jax.nn.log_softmax(model(jnp.asarray([tokens[:-1]]))[0], axis=-1)
        return np.asarray(logp[jnp.arange(len(tokens) - 1), jnp.asarray(tokens[1:])])

    rng = np.random.default_rng(0)
    short, long = rng.integers(0, 61, 10).tolist(), rng.integers(0, 61, 40).tolist()
    ids = np.zeros((2, 41), np.int32)
    mask = np.zeros((2, 40), np.float32)
    ids[0, :10], mask[0, :9] = short, 1
    ids[1, :40], mask[1, :39] = long, 1
    both = np.asarray(scorer._logprobs(scorer.state, jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(both[0, :9], unpadded(short), atol=1e-5)  # short factors, though the batch is 40 wide
    np.testing.assert_allclose(both[1, :39], unpadded(long), atol=1e-5)
    np.testing.assert_allclose(scorer.token_logprobs(short), unpadded(short), atol=1e-5)  # padded to 32 alone
