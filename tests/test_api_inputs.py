"""The Python API checks its arguments where they enter, as the CLI does: a matrix grouped by entry point
(load / generate / stream / chat / perplexity + score / Engine / CLI flags). Each row: the call, the
exception type (a builtin TypeError / ValueError, and always a JaxlmError so the CLI prints one line)
and a regex its message must match, naming the argument. Bad rows run with compiling and model loading
switched off, so a check that fires only after the work fails here; rows that must still work follow."""

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from inference_util import random_model

import jaxlm
from jaxlm.assets import resolve_path
from jaxlm.checkpoint import load_model, save_model
from jaxlm.cli.main import main
from jaxlm.config import RunConfig, from_dict, load_run_config
from jaxlm.errors import JaxlmError
from jaxlm.inference import Engine, LanguageModel, SamplingParams, api, engine as engine_lib
from jaxlm.model import ModelConfig

TOKENIZER = resolve_path("bundled:tokenizer/tokenizer.model")
TEMPLATE = "bundled:chat/script.jinja"
CFG = ModelConfig(name="tiny_inputs", vocab_size=2048, model_dim=64, num_layers=2, head_dim=16, num_query_heads=4,
                  num_kv_heads=2, ffn_dim=128, max_context=64)
MSGS = [{"role": "user", "content": "Good morrow."}]
INF, NAN = float("inf"), float("nan")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "model"
    save_model(path, RunConfig(model=CFG), random_model(CFG, seed=3), extra_files=[TOKENIZER])
    return path


@pytest.fixture(scope="module")
def lm(model_dir):
    return jaxlm.load(model_dir)


@pytest.fixture
def no_work(lm, monkeypatch):
    """Loading a model or running a compiled program fails the row: the check must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the argument check")

    for name in ("_prefill_program", "_decode_program"):
        monkeypatch.setattr(engine_lib, name, refuse)
    monkeypatch.setattr(lm.scorer, "_logprobs", refuse)
    monkeypatch.setattr(api, "load_model", refuse)


def check_row(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert isinstance(info.value, JaxlmError)  # the CLI prints it as one line (exit 2)


# ---- load ---------------------------------------------------------------------------------------
LOAD_ROWS = [
    ("path int", lambda m, d: jaxlm.load(5), TypeError, r"path must be a path .*got 5"),
    ("cache_dtype unknown", lambda m, d: jaxlm.load(d, cache_dtype="fp8"), ValueError,
     r"unknown cache dtype 'fp8'; cache_dtype must be one of auto, float32"),
    ("cache_dtype None", lambda m, d: jaxlm.load(d, cache_dtype=None), TypeError, r"cache_dtype must be one of .*None"),
    ("tokenizer int", lambda m, d: jaxlm.load(d, tokenizer=5), TypeError,
     r"tokenizer must be a jaxlm Tokenizer or a path .*got 5"),
    ("tokenizer missing bundled", lambda m, d: jaxlm.load(d, tokenizer="bundled:no_such"), JaxlmError,
     r"tokenizer path bundled:no_such does not exist"),
    ("LanguageModel tokenizer str", lambda m, d: LanguageModel(m.model, "bundled:tokenizer"), TypeError,
     r"tokenizer must be a jaxlm Tokenizer .*got 'bundled:tokenizer'"),
]


@pytest.mark.parametrize("name, call, exc, pattern", LOAD_ROWS, ids=[r[0] for r in LOAD_ROWS])
def test_load_refuses(lm, model_dir, no_work, name, call, exc, pattern):
    check_row(lambda: call(lm, model_dir), exc, pattern)


# ---- generate / generate_ids --------------------------------------------------------------------
GENERATE_ROWS = [
    ("max_new_tokens float", lambda lm: lm.generate("ROMEO:", 10.5), TypeError,
     r"max_new_tokens must be >= 1 \(an integer\), got 10\.5"),
    ("max_new_tokens str", lambda lm: lm.generate("ROMEO:", "10"), TypeError, r"max_new_tokens .*got '10'"),
    ("max_new_tokens bool", lambda lm: lm.generate("ROMEO:", True), TypeError, r"max_new_tokens .*got True"),
    ("max_new_tokens 0", lambda lm: lm.generate("ROMEO:", 0), ValueError, r"max_new_tokens must be >= 1 .*got 0"),
    ("prompt None", lambda lm: lm.generate(None), TypeError, r"prompt must be a str or a list of str, got None"),
    ("prompt empty list", lambda lm: lm.generate([]), ValueError, r"prompt is an empty list"),
    ("prompt list with int", lambda lm: lm.generate(["To be", 3]), TypeError, r"prompt 1 must be a str, got 3"),
    ("prompt empty", lambda lm: lm.generate(""), ValueError, r"prompt 0 is empty"),
    ("temperature str", lambda lm: lm.generate("ROMEO:", temperature="0.8"), TypeError,
     r"temperature must be >= 0 \(a finite number; 0 = greedy\), got '0\.8'"),
    ("temperature inf", lambda lm: lm.generate("ROMEO:", temperature=INF), ValueError, r"temperature .*got inf"),
    ("temperature nan", lambda lm: lm.generate("ROMEO:", temperature=NAN), ValueError, r"temperature .*got nan"),
    ("temperature over float32", lambda lm: lm.generate("ROMEO:", temperature=1e39), ValueError,
     r"temperature must be >= 0 \(a finite number"),
    ("temperature negative", lambda lm: lm.generate("ROMEO:", temperature=-1), ValueError, r"temperature must be >= 0"),
    ("repetition_penalty inf", lambda lm: lm.generate("ROMEO:", repetition_penalty=INF), ValueError,
     r"repetition_penalty must be > 0 \(a finite number; 1 = off\), got inf"),
    ("repetition_penalty 0", lambda lm: lm.generate("ROMEO:", repetition_penalty=0), ValueError,
     r"repetition_penalty must be > 0"),
    ("top_k negative", lambda lm: lm.generate("ROMEO:", top_k=-1), ValueError,
     r"top_k must be a non-negative integer \(0 = off\), got -1"),
    ("top_k bool", lambda lm: lm.generate("ROMEO:", top_k=True), TypeError, r"top_k .*got True"),
    ("top_k float", lambda lm: lm.generate("ROMEO:", top_k=2.5), TypeError, r"top_k .*got 2\.5"),
    ("top_p 0", lambda lm: lm.generate("ROMEO:", top_p=0), ValueError, r"top_p must be in \(0, 1\] .*got 0"),
    ("top_p 1.5", lambda lm: lm.generate("ROMEO:", top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    ("seed 2**80", lambda lm: lm.generate("ROMEO:", seed=2**80), ValueError,
     r"seed must be in \[0, 4294967295\] \(an integer\), got 1208925819614629174706176"),
    ("seed negative", lambda lm: lm.generate("ROMEO:", seed=-1), ValueError, r"seed must be in \[0, 4294967295\]"),
    ("seed str", lambda lm: lm.generate("ROMEO:", seed="abc"), TypeError, r"seed must be .*got 'abc'"),
    ("unknown sampling name", lambda lm: lm.generate("ROMEO:", temprature=0.5), TypeError,
     r"unknown sampling argument 'temprature'; choose from temperature"),
    ("stop_tokens int", lambda lm: lm.generate("ROMEO:", stop_tokens=5), TypeError,
     r"stop_tokens must be a list of token ids"),
    ("stop_tokens str element", lambda lm: lm.generate("ROMEO:", stop_tokens=["\n"]), TypeError,
     r"stop_tokens must be a list of token ids \(ints\), got an element '\\n'"),
    ("stop_tokens past vocab", lambda lm: lm.generate("ROMEO:", stop_tokens=[2048]), ValueError,
     r"stop_tokens has token id 2048 outside the model's vocabulary \[0, 2048\)"),
    ("over the context", lambda lm: lm.generate("ROMEO:", 60), ValueError,
     r"prompt 0 has \d+ tokens \+ max_new_tokens 60 = \d+, over the model's context of 64"),
    ("ids: text given", lambda lm: lm.generate_ids("ROMEO:", 4), TypeError,
     r"prompts must be a list of token-id lists.*for text use generate"),
    ("ids: flat list", lambda lm: lm.generate_ids([1, 2], 4), TypeError, r"prompt 0 must be a list of token ids"),
    ("ids: past vocab", lambda lm: lm.generate_ids([[1, 5000]], 4), ValueError,
     r"prompt 0 has token id 5000 outside the model's vocabulary \[0, 2048\)"),
    ("ids: max_new_tokens float", lambda lm: lm.generate_ids([[1, 2]], 4.0), TypeError, r"max_new_tokens .*got 4\.0"),
    ("ids: on_token not callable", lambda lm: lm.generate_ids([[1, 2]], 4, on_token=5), TypeError,
     r"on_token must be a function or None, got 5"),
]


@pytest.mark.parametrize("name, call, exc, pattern", GENERATE_ROWS, ids=[r[0] for r in GENERATE_ROWS])
def test_generate_refuses(lm, no_work, name, call, exc, pattern):
    check_row(lambda: call(lm), exc, pattern)


# ---- stream: refused when called, not at the first next() -----------------------------------------
STREAM_ROWS = [
    ("max_new_tokens float", lambda lm: lm.stream("ROMEO:", 10.5), TypeError, r"max_new_tokens .*got 10\.5"),
    ("prompt None", lambda lm: lm.stream(None), TypeError, r"prompt must be a str, got None"),
    ("prompt list", lambda lm: lm.stream(["ROMEO:"]), TypeError, r"prompt must be a str, got \['ROMEO:'\]"),
    ("seed negative", lambda lm: lm.stream("ROMEO:", seed=-1), ValueError, r"seed must be in \[0, 4294967295\]"),
    ("top_p 0", lambda lm: lm.stream("ROMEO:", top_p=0), ValueError, r"top_p must be in \(0, 1\]"),
    ("over the context", lambda lm: lm.stream("ROMEO:", 60), ValueError, r"over the model's context of 64"),
]


@pytest.mark.parametrize("name, call, exc, pattern", STREAM_ROWS, ids=[r[0] for r in STREAM_ROWS])
def test_stream_refuses(lm, no_work, name, call, exc, pattern):
    check_row(lambda: call(lm), exc, pattern)


# ---- chat / stream_chat / chat_prompt -------------------------------------------------------------
CHAT_ROWS = [
    ("content int", lambda lm: lm.chat([{"role": "user", "content": 5}], chat_template=TEMPLATE), TypeError,
     r"message 0's content must be a str \(or a list of parts\), got 5"),
    ("content None", lambda lm: lm.chat([{"role": "user", "content": None}], chat_template=TEMPLATE), TypeError,
     r"message 0's content must be a str .*got None"),
    ("messages str", lambda lm: lm.chat("hello", chat_template=TEMPLATE), TypeError,
     r"messages must be a list of .* dicts, got 'hello'"),
    ("message not a dict", lambda lm: lm.chat(["hello"], chat_template=TEMPLATE), TypeError,
     r"message 0 must be a dict with a 'role'"),
    ("message without role", lambda lm: lm.chat([{"content": "hi"}], chat_template=TEMPLATE), TypeError,
     r"message 0 must be a dict with a 'role'"),
    ("messages empty", lambda lm: lm.chat([], chat_template=TEMPLATE), ValueError, r"messages is empty"),
    ("template missing", lambda lm: lm.chat(MSGS, chat_template="bundled:chat/nope.jinja"), ValueError,
     r"chat template file bundled:chat/nope\.jinja does not exist"),
    ("template a folder", lambda lm: lm.chat(MSGS, chat_template="bundled:chat"), ValueError,
     r"chat template file bundled:chat is a directory, not a file"),
    ("template int", lambda lm: lm.chat(MSGS, chat_template=5), TypeError, r"chat_template must be a path .*got 5"),
    ("no template at all", lambda lm: lm.chat(MSGS), JaxlmError, r"this model has no chat template"),
    ("max_new_tokens float", lambda lm: lm.chat(MSGS, 10.5, chat_template=TEMPLATE), TypeError,
     r"max_new_tokens .*got 10\.5"),
    ("stream_chat temperature inf", lambda lm: lm.stream_chat(MSGS, temperature=INF, chat_template=TEMPLATE),
     ValueError, r"temperature .*got inf"),
    ("stream_chat over the context", lambda lm: lm.stream_chat(MSGS, 60, chat_template=TEMPLATE), ValueError,
     r"over the model's context of 64"),
    ("chat_prompt flag str", lambda lm: lm.chat_prompt(MSGS, chat_template=TEMPLATE, add_generation_prompt="no"),
     TypeError, r"add_generation_prompt must be True or False, got 'no'"),
]


@pytest.mark.parametrize("name, call, exc, pattern", CHAT_ROWS, ids=[r[0] for r in CHAT_ROWS])
def test_chat_refuses(lm, no_work, name, call, exc, pattern):
    check_row(lambda: call(lm), exc, pattern)


# ---- perplexity / score / logprobs ----------------------------------------------------------------
TEXT = "Friends, Romans, countrymen, lend me your ears."
SCORING_ROWS = [
    ("text int", lambda lm: lm.perplexity(5), TypeError, r"text must be a str, got 5"),
    ("text empty", lambda lm: lm.perplexity(""), ValueError, r"text is empty"),
    ("seq_len 0", lambda lm: lm.perplexity(TEXT, seq_len=0), ValueError,
     r"seq_len must be in \[1, 63\] \(an integer; None = the model's context - 1\), got 0"),
    ("seq_len past context", lambda lm: lm.perplexity(TEXT, seq_len=64), ValueError, r"seq_len must be in \[1, 63\]"),
    ("seq_len float", lambda lm: lm.perplexity(TEXT, seq_len=2.5), TypeError, r"seq_len .*got 2\.5"),
    ("batch_size 0", lambda lm: lm.perplexity(TEXT, batch_size=0), ValueError, r"batch_size must be >= 1 .*got 0"),
    ("batch_size negative", lambda lm: lm.perplexity(TEXT, batch_size=-2), ValueError, r"batch_size .*got -2"),
    ("neither text nor path", lambda lm: lm.perplexity(), TypeError, r"give either text or path"),
    ("both text and path", lambda lm: lm.perplexity(TEXT, path="x.txt"), TypeError, r"give either text or path"),
    ("path int", lambda lm: lm.perplexity(path=5), TypeError, r"path must be a path .*got 5"),
    ("path missing bundled", lambda lm: lm.perplexity(path="bundled:corpus/no_such.txt"), JaxlmError,
     r"data file bundled:corpus/no_such\.txt does not exist"),
    ("path a folder", lambda lm: lm.perplexity(path="bundled:corpus"), JaxlmError, r"is a directory, not a file"),
    ("score None", lambda lm: lm.score(None), TypeError, r"text must be a str, got None"),
    ("logprobs bytes", lambda lm: lm.logprobs(b"To be"), TypeError, r"text must be a str, got b'To be'"),
    ("score empty", lambda lm: lm.score(""), ValueError, r"text is empty"),
    ("Scorer seq_len 0", lambda lm: lm.scorer.perplexity([1, 2, 3], seq_len=0), ValueError, r"seq_len must be in"),
]


@pytest.mark.parametrize("name, call, exc, pattern", SCORING_ROWS, ids=[r[0] for r in SCORING_ROWS])
def test_scoring_refuses(lm, no_work, name, call, exc, pattern):
    check_row(lambda: call(lm), exc, pattern)


# ---- Engine and SamplingParams ---------------------------------------------------------------------
ENGINE_ROWS = [
    ("cache_dtype unknown", lambda lm: Engine(lm.model, cache_dtype="fp8"), ValueError, r"unknown cache dtype 'fp8'"),
    ("layers unknown", lambda lm: Engine(lm.model, layers="fast"), ValueError, r"unknown layers layout 'fast'"),
    ("max_new_tokens float", lambda lm: lm.engine.generate([[1, 2]], 10.5), TypeError, r"max_new_tokens .*10\.5"),
    ("sampling a dict", lambda lm: lm.engine.generate([[1, 2]], 4, {"temperature": 1.0}), TypeError,
     r"sampling must be a SamplingParams, got \{'temperature': 1\.0\}"),
    ("stop lists per prompt", lambda lm: lm.engine.generate([[1, 2]], 4, stop_tokens=[[1], [2]]), ValueError,
     r"stop_tokens has 2 lists for 1 prompts"),
    ("no prompts", lambda lm: lm.engine.generate([], 4), ValueError, r"no prompts given"),
    ("empty prompt", lambda lm: lm.engine.generate([[]], 4), ValueError, r"prompt 0 is empty"),
    ("float id", lambda lm: lm.engine.generate([[1, 2.0]], 4), TypeError, r"prompt 0 must be a list of token ids"),
    ("over the context", lambda lm: lm.engine.generate([[1] * 60], 8), ValueError,
     r"prompt 0 has 60 tokens \+ max_new_tokens 8 = 68, over the model's context of 64"),
    ("SamplingParams temperature inf", lambda lm: SamplingParams(temperature=INF), ValueError, r"temperature .*inf"),
    ("SamplingParams seed 2**32", lambda lm: SamplingParams(seed=2**32), ValueError,
     r"seed must be in \[0, 4294967295\]"),
]


@pytest.mark.parametrize("name, call, exc, pattern", ENGINE_ROWS, ids=[r[0] for r in ENGINE_ROWS])
def test_engine_refuses(lm, no_work, name, call, exc, pattern):
    check_row(lambda: call(lm), exc, pattern)


# ---- the CLI flags share SamplingParams' checks: exit 2, one line, before the model loads -----------
CLI_ROWS = [
    (["--repetition-penalty", "inf"], r"repetition_penalty must be > 0 \(a finite number; 1 = off\), got inf"),
    (["--temperature", "nan"], r"temperature must be >= 0 .*got nan"),
    (["--seed", "100000000000000000000000"], r"seed must be in \[0, 4294967295\]"),
    (["--seed", "-1"], r"seed must be in \[0, 4294967295\]"),
    (["--top-k", "-2"], r"top_k must be a non-negative integer"),
]


@pytest.mark.parametrize("flags, pattern", CLI_ROWS, ids=[" ".join(r[0]) for r in CLI_ROWS])
def test_cli_generate_flags_refused(lm, model_dir, no_work, capsys, flags, pattern):
    assert main(["generate", "--ckpt", str(model_dir), "--prompt", "x", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "internal error" not in err
    assert re.search(pattern, err), err


# ---- found by benchmarks/probe_inputs.py: Engine, chat, config and checkpoint entry points ----------
def _run_cfg(d):
    from jaxlm.checkpoint.model_dir import read_config

    return read_config(d)


def _alias_bomb():  # 9**9 strings behind one value (YAML aliases): naming it must not expand it
    value = ["x"] * 9
    for _ in range(8):
        value = [value] * 9
    return value


PROBE_ROWS = [
    ("prompt lone surrogate", lambda lm, d: lm.generate("ROMEO:\udcff"), ValueError,
     r"prompt 0 is not valid Unicode text: it holds the lone surrogate '\\udcff' at position 6"),
    ("chat content surrogate", lambda lm, d: lm.chat([{"role": "user", "content": "\ud800"}], chat_template=TEMPLATE),
     ValueError, r"message 0's content is not valid Unicode text"),
    ("chat content parts not dicts", lambda lm, d: lm.chat([{"role": "user", "content": [1, 2]}],
                                                           chat_template=TEMPLATE), TypeError,
     r"message 0's content parts must be dicts such as \{'type': 'text', 'text': \.\.\.\}, got a part 1"),
    ("chat template range too big", lambda lm, d: lm.chat(MSGS, chat_template="{% for i in range(10**9) %}{{ i }}"
                                                                               "{% endfor %}"), JaxlmError,
     r"the chat template failed on this conversation \(OverflowError: Range too big"),
    ("Engine model None", lambda lm, d: Engine(None), TypeError, r"model must be a jaxlm model .*got None"),
    ("LanguageModel model str", lambda lm, d: LanguageModel("model", lm.tokenizer), TypeError,
     r"model must be a jaxlm model .*got 'model'"),
    ("config overrides a str", lambda lm, d: load_run_config("tiny_uniform", "model.num_layers=4"), TypeError,
     r"overrides must be a list of 'KEY=VALUE' strings, got 'model.num_layers=4'"),
    ("config override a tuple", lambda lm, d: load_run_config("tiny_uniform", [("model.num_layers", 4)]), TypeError,
     r"override \('model.num_layers', 4\) must be a 'KEY=VALUE' string"),
    ("config an int", lambda lm, d: load_run_config(5), TypeError, r"config must be a shipped config name .*got 5"),
    ("config alias bomb", lambda lm, d: from_dict(ModelConfig, {"name": _alias_bomb()}), JaxlmError,
     r"name must be a string, got \[\[\["),
    ("load_model run_cfg str", lambda lm, d: load_model(d, run_cfg="x"), TypeError,
     r"run_cfg must be a jaxlm.config.RunConfig .*got 'x'"),
    ("save_model run_cfg dict", lambda lm, d: save_model(d.parent / "out", {"model": {}}, lm.model), TypeError,
     r"run_cfg must be a jaxlm.config.RunConfig"),
    ("save_model model None", lambda lm, d: save_model(d.parent / "out", _run_cfg(d), None), TypeError,
     r"model must be a jaxlm model .*got None"),
]


@pytest.mark.parametrize("name, call, exc, pattern", PROBE_ROWS, ids=[r[0] for r in PROBE_ROWS])
def test_probe_finds_refused(lm, model_dir, no_work, name, call, exc, pattern):
    check_row(lambda: call(lm, model_dir), exc, pattern)
    assert not (model_dir.parent / "out").exists()


def test_reading_a_fifo_is_refused_not_blocked(lm, model_dir, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    check_row(lambda: jaxlm.load(model_dir, tokenizer=fifo), JaxlmError, r"tokenizer path .*fifo is not a regular file")
    check_row(lambda: lm.perplexity(path=fifo), JaxlmError, r"data file .*fifo is not a regular file")
    check_row(lambda: lm.chat(MSGS, chat_template=fifo), ValueError, r"chat template file .*fifo is not a regular file")
    check_row(lambda: load_run_config(fifo), JaxlmError, r"config .*fifo is not a regular file")


def test_a_batch_that_cannot_fit_is_refused_before_compiling(lm, no_work, monkeypatch):
    monkeypatch.setattr(jaxlm.errors, "host_ram_bytes", lambda: 2 ** 20)  # a 1 MiB host
    check_row(lambda: lm.generate(["ROMEO:"] * 64, 8), ValueError,
              r"64 prompts of up to 32 tokens .*need at least .* GiB .*more than the 0\.0 GiB of this host")


def test_probe_finds_in_the_data_convert_and_tokenizer_apis(lm, tmp_path):
    from jaxlm.convert.hf_io import HFReader
    from jaxlm.data import make_eval_iterator
    from jaxlm.data.config import DataConfig, SourceConfig
    from jaxlm.tokenizer.train import train_sentencepiece

    data = DataConfig(validation=(SourceConfig(path="bundled:corpus/valid"),))
    check_row(lambda: make_eval_iterator(data, lm.tokenizer, seq_len=10 ** 12, batch_size=8), JaxlmError,
              r"the data pipeline would hold .* GiB of rows .*more than half of this host's")
    (tmp_path / "hf").mkdir()
    os.mkfifo(tmp_path / "hf" / "model.safetensors")
    check_row(lambda: HFReader(tmp_path / "hf"), JaxlmError, r"model.safetensors is not a regular file")
    check_row(lambda: train_sentencepiece(["bundled:corpus/valid"], tmp_path / "tok", 10 ** 20), JaxlmError,
              r"vocab_size must be an integer in \[1, 2\*\*31\)")


# ---- what must still work -------------------------------------------------------------------------
def test_bundled_path_perplexity_is_finite(lm):
    ppl = lm.perplexity(path="bundled:corpus/valid/as_you_like_it.txt", batch_size=64)
    assert math.isfinite(ppl) and ppl > 1


def test_seq_len_none_and_numpy_ints_are_accepted(lm):
    assert lm.perplexity(TEXT, seq_len=np.int64(8), batch_size=np.int32(2)) == pytest.approx(
        lm.perplexity(TEXT, seq_len=8, batch_size=2), rel=1e-6)
    assert math.isfinite(lm.perplexity(TEXT, seq_len=None))


def test_load_takes_a_bundled_tokenizer(model_dir, lm):
    other = jaxlm.load(model_dir, tokenizer="bundled:tokenizer")
    assert other.tokenizer.encode(TEXT) == lm.tokenizer.encode(TEXT)


def test_chat_template_as_bundled_path_path_or_text(lm):
    text = resolve_path(TEMPLATE).read_text()
    want = lm.chat_prompt(MSGS, chat_template=text)
    assert lm.chat_prompt(MSGS, chat_template=TEMPLATE) == want
    assert lm.chat_prompt(MSGS, chat_template=Path(resolve_path(TEMPLATE))) == want
    assert lm.chat_prompt([{"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}, *MSGS],
                          chat_template=text)  # content may be absent beside tool_calls, as in transformers


def test_numpy_knobs_and_negative_stop_ids_generate(lm):
    text = lm.generate("ROMEO:", np.int64(4), temperature=1, top_k=np.int32(5), top_p=np.float32(0.9),
                       seed=np.uint32(2**32 - 1), stop_tokens=[-1])
    assert isinstance(text, str)


def test_sampling_params_normalise_and_clamp():
    sp = SamplingParams(temperature=np.float32(0.5), top_k=2**40, seed=np.int64(7))
    assert type(sp.temperature) is float and type(sp.top_k) is int and type(sp.seed) is int
    assert int(sp.as_arrays()["top_k"]) == 2**31 - 1  # past any vocabulary: no limit, and no int32 overflow
