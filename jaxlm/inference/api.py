"""The notebook API: `lm = jaxlm.load(path)`, then `lm.generate("To be")`, `lm.stream(...)`, `lm.score(...)`.

`load` accepts anything `jaxlm.checkpoint.load_model` does (a model dir from save_model or
`jaxlm convert`, a training run dir, or RUN_DIR/checkpoints/<step>) and opens the tokenizer
saved beside its config.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxlm.checkpoint import load_model
from jaxlm.checkpoint.locate import load_tokenizer_for, locate
from jaxlm.errors import JaxlmError
from jaxlm.inference import chat as chat_lib
from jaxlm.inference.engine import Engine, GenerationOutput
from jaxlm.inference.sampling import SamplingParams
from jaxlm.inference.scoring import Scorer
from jaxlm.model import to_bucketed
from jaxlm.tokenizer import check_vocab, load_tokenizer
from jaxlm.tokenizer.hf_json import GENERATION_FILE, read_json


def load(path: str | Path, cache_dtype: str = "auto", tokenizer=None) -> "LanguageModel":
    """Model + tokenizer from a model dir, run dir or checkpoint step, ready to generate.

    cache_dtype: KV cache storage, auto (the model's compute dtype) | float32 | bfloat16 | int8.
    tokenizer: a tokenizer object or path, to override the one saved with the model.
    The model dir's generation_config.json (from `jaxlm convert from-hf`) gives chat stop ids.
    """
    run_cfg, model = load_model(path)
    model = to_bucketed(model, run_cfg.model)  # the layer buckets of training serve decode too
    if tokenizer is None:
        tokenizer = load_tokenizer_for(path)
    elif isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    generation_config = read_json(locate(path)[0] / GENERATION_FILE)
    return LanguageModel(model, tokenizer, cache_dtype=cache_dtype, generation_config=generation_config)


class LanguageModel:
    """A model with its tokenizer: generation on strings, streaming, log-probabilities, perplexity."""

    def __init__(self, model, tokenizer, cache_dtype: str = "auto", generation_config: dict | None = None):
        check_vocab(model.cfg.vocab_size, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = dict(generation_config or {})  # HF generation_config.json: eos ids for chat
        self.cfg = model.cfg
        self.engine = Engine(model, cache_dtype=cache_dtype, vocab_limit=tokenizer.vocab_size)
        self.scorer = Scorer(model)

    def __repr__(self) -> str:
        return (f"LanguageModel({self.cfg.name}, context {self.cfg.max_context}, "
                f"cache {self.engine.cache_dtype}, {self.tokenizer!r})")

    # ---- generation ---------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str], add_bos: bool = True) -> list[list[int]]:
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise JaxlmError(f"prompt {i} is a {type(p).__name__}, not a string; use generate_ids for token ids")
            if not p:
                raise JaxlmError(f"prompt {i} is empty; give some text to continue")
        return [self.tokenizer.encode(p, add_bos=add_bos and self.tokenizer.bos_id >= 0) for p in prompts]

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                     stop_tokens=None, on_token=None, **sampling) -> GenerationOutput:
        """Token ids in, GenerationOutput out. sampling: temperature, top_k, top_p, repetition_penalty, seed."""
        stop_tokens = self._default_stops() if stop_tokens is None else stop_tokens
        return self.engine.generate(prompts, max_new_tokens, SamplingParams(**sampling), stop_tokens, on_token)

    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 64, *, add_bos: bool = True,
                 stop_tokens=None, **sampling) -> str | list[str]:
        """Continue a prompt (or each of a list of prompts); returns only the new text.

        sampling: temperature (0 = greedy), top_k, top_p, repetition_penalty, seed.
        stop_tokens: ids that end generation (default: the tokenizer's eos).
        """
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        ids = self.encode_prompts(prompts, add_bos)
        out = self.generate_ids(ids, max_new_tokens, stop_tokens=stop_tokens, **sampling)
        texts = [self.continuation_text(p, t) for p, t in zip(ids, out.tokens)]
        return texts[0] if single else texts

    def stream(self, prompt: str, max_new_tokens: int = 64, *, add_bos: bool = True, stop_tokens=None,
               **sampling) -> Iterator[str]:
        """Yield the new text piece by piece as the compiled decode loop produces tokens.

        The loop runs in a worker thread and reports each step through a host callback; closing the
        generator early (break) tells the loop to stop.
        """
        return self._stream_ids(self.encode_prompts([prompt], add_bos), max_new_tokens, stop_tokens, sampling)

    def _stream_ids(self, ids: list[list[int]], max_new_tokens: int, stop_tokens, sampling: dict) -> Iterator[str]:
        q: queue.Queue = queue.Queue()
        closed = threading.Event()

        def on_token(step, tokens, done):
            if tokens[0] >= 0:
                q.put(int(tokens[0]))
            return closed.is_set() or bool(done[0])

        def work():
            try:
                self.generate_ids(ids, max_new_tokens, stop_tokens=stop_tokens, on_token=on_token, **sampling)
                q.put(None)
            except BaseException as e:  # handed to the consumer, re-raised there
                q.put(e)

        stops = set(np.ravel(self._default_stops() if stop_tokens is None else stop_tokens).tolist())
        SamplingParams(**sampling)  # bad knobs raise here, in the caller's thread
        self.engine.check_request(ids, max_new_tokens)
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
                if item in stops:
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
        batch = messages if chat_lib.is_batch(messages) else [messages]
        ids = [self.chat_prompt(m, chat_template=chat_template) for m in batch]
        stops = chat_lib.stop_ids(self.tokenizer, self.generation_config, chat_template) if stop_tokens is None \
            else stop_tokens
        out = self.generate_ids(ids, max_new_tokens, stop_tokens=stops, **sampling)
        replies = [self.continuation_text(p, t) for p, t in zip(ids, out.tokens)]
        return replies if chat_lib.is_batch(messages) else replies[0]

    def stream_chat(self, messages, max_new_tokens: int = 256, *, chat_template: str | None = None,
                    stop_tokens=None, **sampling) -> Iterator[str]:
        """Yield the reply to one conversation piece by piece (see `chat` and `stream`)."""
        ids = [self.chat_prompt(messages, chat_template=chat_template)]
        stops = chat_lib.stop_ids(self.tokenizer, self.generation_config, chat_template) if stop_tokens is None \
            else stop_tokens
        return self._stream_ids(ids, max_new_tokens, stops, sampling)

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
    def logprobs(self, text: str, add_bos: bool = True) -> list[tuple[str, float]]:
        """(piece, log p(piece | everything before it)) for each token of text; natural log."""
        if not text:
            raise JaxlmError("text to score is empty")
        ids = self.tokenizer.encode(text, add_bos=add_bos and self.tokenizer.bos_id >= 0)
        lp = self.scorer.token_logprobs(ids)
        return [(self.tokenizer.decode([t]), float(v)) for t, v in zip(ids[1:], lp)]

    def score(self, text: str, add_bos: bool = True) -> float:
        """Total log-probability (nats) of text under the model."""
        return float(sum(v for _, v in self.logprobs(text, add_bos)))

    def perplexity(self, text: str | None = None, *, path: str | Path | None = None, seq_len: int | None = None,
                   batch_size: int = 8) -> float:
        """Perplexity of a text or a file, scored in non-overlapping windows of seq_len tokens."""
        if (text is None) == (path is None):
            raise JaxlmError("give either text or path to perplexity()")
        if path is not None:
            text = read_text(path)
        ids = self.tokenizer.encode(text, add_bos=self.tokenizer.bos_id >= 0)
        return self.scorer.perplexity(ids, seq_len, batch_size)[0]


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents, or a JaxlmError naming the problem."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise JaxlmError(f"data file {path} {what}; give a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JaxlmError(f"data file {path} is not UTF-8 text") from None
