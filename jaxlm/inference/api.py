"""The notebook API: `lm = jaxlm.load(path)`, then `lm.generate("To be")`, `lm.stream(...)`, `lm.score(...)`.

`load` accepts anything `jaxlm.checkpoint.load_model` does (a model dir from save_model or
`jaxlm convert`, a training run dir, or RUN_DIR/checkpoints/<step>) and opens the tokenizer
saved beside its config.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxlm.assets import resolve_path
from jaxlm.checkpoint import load_model
from jaxlm.checkpoint.locate import load_tokenizer_for, locate
from jaxlm.errors import JaxlmError
from jaxlm.inference import chat as chat_lib, checks
from jaxlm.inference.engine import CACHE_DTYPES, Engine, GenerationOutput
from jaxlm.inference.sampling import SamplingParams
from jaxlm.inference.scoring import Scorer
from jaxlm.tokenizer import Tokenizer, check_vocab, load_tokenizer
from jaxlm.tokenizer.hf_json import GENERATION_FILE, read_json
from jaxlm.variants import decode_model, inference_layout


def load(path: str | Path, cache_dtype: str = "auto", tokenizer=None) -> "LanguageModel":
    """Model + tokenizer from a model dir, run dir or checkpoint step, ready to generate.

    cache_dtype: KV cache storage, auto (the model's compute dtype) | float32 | bfloat16 | int8.
    tokenizer: a tokenizer object or path (bundled:tokenizer works), to override the one saved with the model.
    The model dir's generation_config.json (from `jaxlm convert from-hf`) gives chat stop ids.
    """
    checks.path("path", path)
    checks.choice("cache_dtype", cache_dtype, CACHE_DTYPES, "cache dtype")
    if tokenizer is not None and not isinstance(tokenizer, Tokenizer):  # a bad path fails before the model loads
        tokenizer = load_tokenizer(tokenizer_path(tokenizer))
    run_cfg, stored = load_model(path)
    model = inference_layout(stored, run_cfg)  # scoring runs the run's scan groups (a plain model's buckets)
    if tokenizer is None:
        tokenizer = load_tokenizer_for(path)
    generation_config = read_json(locate(path)[0] / GENERATION_FILE)
    return LanguageModel(model, tokenizer, cache_dtype=cache_dtype, generation_config=generation_config,
                         decoding_model=decode_model(stored, run_cfg, scanned=model))


class LanguageModel:
    """A model with its tokenizer: generation on strings, streaming, log-probabilities, perplexity."""

    def __init__(self, model, tokenizer, cache_dtype: str = "auto", generation_config: dict | None = None,
                 decoding_model=None):
        """decoding_model: the same model in the layout generation runs (`jaxlm.variants.decode_model`), when the
        caller has it; default: the Engine converts `model` itself."""
        checks.model("model", model)
        if not isinstance(tokenizer, Tokenizer):
            raise checks.ArgumentTypeError(f"tokenizer must be a jaxlm Tokenizer (jaxlm.tokenizer.load_tokenizer), "
                                           f"got {checks.shown(tokenizer)}")
        check_vocab(model.cfg.vocab_size, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = dict(generation_config or {})  # HF generation_config.json: eos ids for chat
        self.cfg = model.cfg
        self.engine = Engine(decoding_model or model, cache_dtype=cache_dtype, vocab_limit=tokenizer.vocab_size)
        self.scorer = Scorer(model)

    def __repr__(self) -> str:
        return (f"LanguageModel({self.cfg.name}, context {self.cfg.max_context}, "
                f"cache {self.engine.cache_dtype}, {self.tokenizer!r})")

    # ---- generation ---------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str], add_bos: bool | None = None) -> list[list[int]]:
        for i, p in enumerate(checks.texts("prompt", prompts)):
            if not p:
                raise checks.ArgumentValueError(f"prompt {i} is empty; give some text to continue")
        return [self.tokenizer.encode_input(p, add_bos) for p in prompts]

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                     stop_tokens=None, on_token=None, **sampling) -> GenerationOutput:
        """Token ids in, GenerationOutput out. sampling: temperature, top_k, top_p, repetition_penalty, seed."""
        params, stops = self._request(max_new_tokens, sampling, stop_tokens, self._default_stops)
        return self.engine.generate(prompts, max_new_tokens, params, stops, on_token)

    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 64, *, add_bos: bool | None = None,
                 stop_tokens=None, **sampling) -> str | list[str]:
        """Continue a prompt (or each of a list of prompts); returns only the new text.

        sampling: temperature (0 = greedy), top_k, top_p, repetition_penalty, seed.
        stop_tokens: ids that end generation (default: the tokenizer's eos).
        add_bos: None follows the tokenizer's own rule (`Tokenizer.adds_bos`, as transformers does).
        """
        single = isinstance(prompt, str)
        prompts = checks.texts("prompt", prompt)
        params, stops = self._request(max_new_tokens, sampling, stop_tokens, self._default_stops)
        ids = self.encode_prompts(prompts, add_bos)
        out = self.engine.generate(ids, max_new_tokens, params, stops)
        texts = [self.continuation_text(p, t) for p, t in zip(ids, out.tokens)]
        return texts[0] if single else texts

    def stream(self, prompt: str, max_new_tokens: int = 64, *, add_bos: bool | None = None, stop_tokens=None,
               **sampling) -> Iterator[str]:
        """Yield the new text piece by piece as the compiled decode loop produces tokens.

        The loop runs in a worker thread and reports each step through a host callback; closing the
        generator early (break) tells the loop to stop.
        """
        checks.text("prompt", prompt)
        params, stops = self._request(max_new_tokens, sampling, stop_tokens, self._default_stops)
        return self._stream_ids(self.encode_prompts([prompt], add_bos), max_new_tokens, params, stops)

    def _request(self, max_new_tokens, sampling: dict, stop_tokens, default_stops) -> tuple[SamplingParams, list]:
        """A generation call's checked knobs and stop ids, before any tokenizing or compiling."""
        checks.integer("max_new_tokens", max_new_tokens, 1)
        params = SamplingParams.of(sampling)
        stops = default_stops() if stop_tokens is None else checks.stop_tokens(stop_tokens, self.cfg.vocab_size)
        return params, stops

    def _stream_ids(self, ids: list[list[int]], max_new_tokens: int, params: SamplingParams, stops: list
                    ) -> Iterator[str]:
        self.engine.check_request(ids, max_new_tokens)  # raised now, in the caller's thread, not at the first next()
        return self._pieces(ids, max_new_tokens, params, stops)

    def _pieces(self, ids: list[list[int]], max_new_tokens: int, params: SamplingParams, stops: list
                ) -> Iterator[str]:
        q: queue.Queue = queue.Queue()
        closed = threading.Event()

        def on_token(step, tokens, done):
            if tokens[0] >= 0:
                q.put(int(tokens[0]))
            return closed.is_set() or bool(done[0])

        def work():
            try:
                self.engine.generate(ids, max_new_tokens, params, stops, on_token)
                q.put(None)
            except BaseException as e:  # handed to the consumer, re-raised there
                q.put(e)

        stop_set = set(np.ravel(stops).tolist())  # one row: a flat list, or [[...]] per row
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        new: list[int] = []
        emitted = ""
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                if item in stop_set:
                    continue
                new.append(item)
                text = self.continuation_text(ids[0], new)
                if text.endswith("\ufffd"):  # a multi-byte character is still incomplete
                    continue
                if text.startswith(emitted) and len(text) > len(emitted):
                    yield text[len(emitted):]
                    emitted = text
        finally:
            closed.set()
            worker.join()

    # ---- chat (jaxlm/inference/chat.py) ---------------------------------------------------------
    def chat_prompt(self, messages, *, chat_template: str | None = None, add_generation_prompt: bool = True,
                    **template_kwargs) -> list[int]:
        """The ids of `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` in transformers."""
        return chat_lib.prompt_ids(self.tokenizer, messages, chat_template, add_generation_prompt, **template_kwargs)

    def chat(self, messages, max_new_tokens: int = 256, *, chat_template: str | None = None, stop_tokens=None,
             **sampling) -> str | list[str]:
        """The assistant's reply to a conversation ([{"role": ..., "content": ...}, ...]), or a list of
        replies to a list of conversations (one batch). Stops at the end of the turn (chat_lib.stop_ids)."""
        template = chat_lib.template_source(chat_template)
        params, stops = self._request(max_new_tokens, sampling, stop_tokens, lambda: self._chat_stops(template))
        batch = messages if chat_lib.is_batch(messages) else [messages]
        ids = [self.chat_prompt(m, chat_template=template) for m in batch]
        out = self.engine.generate(ids, max_new_tokens, params, stops)
        replies = [self.continuation_text(p, t) for p, t in zip(ids, out.tokens)]
        return replies if chat_lib.is_batch(messages) else replies[0]

    def stream_chat(self, messages, max_new_tokens: int = 256, *, chat_template: str | None = None,
                    stop_tokens=None, **sampling) -> Iterator[str]:
        """Yield the reply to one conversation piece by piece (see `chat` and `stream`)."""
        template = chat_lib.template_source(chat_template)
        params, stops = self._request(max_new_tokens, sampling, stop_tokens, lambda: self._chat_stops(template))
        ids = [self.chat_prompt(messages, chat_template=template)]
        return self._stream_ids(ids, max_new_tokens, params, stops)

    def _chat_stops(self, template: str | None) -> list[int]:
        return chat_lib.stop_ids(self.tokenizer, self.generation_config, template)

    def continuation_text(self, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
        """Text of new_ids as a continuation of the prompt (keeps the leading space sentencepiece drops)."""
        context = [t for t in prompt_ids[-4:] if t != self.tokenizer.bos_id]
        base = self.tokenizer.decode(context)
        full = self.tokenizer.decode(list(context) + list(new_ids))
        return full[len(base):] if full.startswith(base) else self.tokenizer.decode(new_ids)

    def _default_stops(self) -> list[int]:
        eos = self.tokenizer.eos_id
        return [eos if eos >= 0 else self.cfg.eos_token_id]

    # ---- scoring ------------------------------------------------------------------------------
    def logprobs(self, text: str, add_bos: bool | None = None) -> list[tuple[str, float]]:
        """(piece, log p(piece | everything before it)) for each token of text; natural log."""
        checks.text("text", text)
        ids = self.tokenizer.encode_input(text, add_bos)
        lp = self.scorer.token_logprobs(ids)
        return [(self.tokenizer.decode([t]), float(v)) for t, v in zip(ids[1:], lp)]

    def score(self, text: str, add_bos: bool | None = None) -> float:
        """Total log-probability (nats) of text under the model."""
        return float(sum(v for _, v in self.logprobs(text, add_bos)))

    def perplexity(self, text: str | None = None, *, path: str | Path | None = None, seq_len: int | None = None,
                   batch_size: int = 8) -> float:
        """Perplexity of a text or a file, scored in non-overlapping windows of seq_len tokens."""
        if (text is None) == (path is None):
            raise checks.ArgumentTypeError("give either text or path to perplexity(), not both or neither")
        checks.scoring_windows(seq_len, batch_size, self.cfg.max_context)
        text = read_text(checks.path("path", path)) if path is not None else checks.text("text", text)
        ids = self.tokenizer.encode_input(text)
        return self.scorer.perplexity(ids, seq_len, batch_size)[0]


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents (bundled: paths resolved), or a JaxlmError naming the problem."""
    p = resolve_path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "is not a regular file (a FIFO, socket or " \
            "device)" if p.exists() else "does not exist"
        raise JaxlmError(f"data file {path} {what}; give a UTF-8 text file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JaxlmError(f"data file {path} is not UTF-8 text") from None


def tokenizer_path(tokenizer) -> str | Path:
    """load()'s tokenizer argument when it is not a Tokenizer: a path, or a TypeError naming it."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        raise checks.ArgumentTypeError(f"tokenizer must be a jaxlm Tokenizer or a path to one (bundled:tokenizer "
                                       f"works), got {checks.shown(tokenizer)}")
    return tokenizer
