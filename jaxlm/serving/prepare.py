"""A checked OpenAI request -> the engine's work: prompt ids and RequestParams per choice.

Completions encode text as `lm.generate` does (`tokenizer.encode_input`: BOS by the tokenizer's own
rule) or take token ids as given. Chat renders the messages with the model's chat template and stops at
its end-of-turn ids, exactly as `lm.chat` does (jaxlm.inference.chat: the template's end-of-turn
tokens, generation_config.json's eos ids, the tokenizer's eos). The context rule is checked here so
the 400 names the field: prompt + max_tokens must fit the engine's context. max_tokens defaults to
OpenAI's 16 for completions and to the rest of the context for chat.
"""

from __future__ import annotations

import dataclasses

from jaxlm.errors import JaxlmError
from jaxlm.inference import chat as chat_lib
from jaxlm.serving.protocol import ApiError, ChatRequest, CompletionRequest, prompt_list, stop_strings
from jaxlm.serving.requests import RequestParams

COMPLETION_DEFAULT_MAX_TOKENS = 16


@dataclasses.dataclass
class Work:
    """One HTTP request's engine requests: choice i runs prompts[i] with params[i]."""
    prompts: list[list[int]]
    params: list
    prompt_lengths: list[int]  # one per distinct prompt (usage counts a prompt once for its n choices)
    logprobs_top: int | None  # None: no logprobs asked


class Preparer:
    """Knows the model: tokenizer, chat template, stop ids, context, vocabulary."""

    def __init__(self, lm, max_context: int):
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.max_context = max_context
        self._chat_stops: list[int] | None = None

    def completion(self, req: CompletionRequest) -> Work:
        prompts = [self._prompt_ids(p, i) for i, p in enumerate(prompt_list(req.prompt))]
        top = req.logprobs
        return self._work(req, prompts, req.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS, (), top, "prompt")

    def chat(self, req: ChatRequest) -> Work:
        try:
            ids = chat_lib.prompt_ids(self.tokenizer, req.messages)
            stops = self.chat_stop_ids()
        except JaxlmError as e:
            raise ApiError(400, str(e), param="messages") from None
        max_tokens = req.max_completion_tokens or req.max_tokens
        top = (req.top_logprobs or 0) if req.logprobs else None
        return self._work(req, [ids], max_tokens, None, tuple(stops), top, "messages")

    def chat_stop_ids(self) -> list[int]:
        if self._chat_stops is None:
            self._chat_stops = chat_lib.stop_ids(self.tokenizer, self.lm.generation_config)
        return self._chat_stops

    def _prompt_ids(self, prompt, index: int) -> list[int]:
        param = "prompt" if index == 0 else f"prompt[{index}]"
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, f"{param} is empty; give some text to continue", param="prompt")
            return self.tokenizer.encode_input(prompt)
        vocab = self.lm.cfg.vocab_size
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if not prompt or bad is not None:
            what = "is empty" if not prompt else f"holds token id {bad}, outside the vocabulary [0, {vocab})"
            raise ApiError(400, f"{param} {what}", param="prompt")
        return list(prompt)

    def _work(self, req, prompts: list[list[int]], max_tokens: int | None, default_max: int | None,
              stop_ids: tuple[int, ...], top: int | None, prompt_field: str) -> Work:
        longest = max(len(p) for p in prompts)
        room = self.max_context - longest
        if room < 1:
            raise ApiError(400, f"{prompt_field} is {longest} tokens, which leaves no room for output in the "
                                f"context of {self.max_context} tokens; shorten it", param=prompt_field,
                           code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = room if default_max is None else min(default_max, room)
        elif max_tokens > room:
            field = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
            raise ApiError(400, f"{field}: the prompt ({longest} tokens) + {field} ({max_tokens}) = "
                                f"{longest + max_tokens} is over the context of {self.max_context} tokens; lower "
                                f"{field} to at most {room}", param=field, code="context_length_exceeded")
        params = [self._params(req, max_tokens, stop_ids, top, i) for p in prompts for i in range(req.n)]
        return Work([p for p in prompts for _ in range(req.n)], params, [len(p) for p in prompts], top)

    def _params(self, req, max_tokens: int, stop_ids: tuple[int, ...], top: int | None, index: int):
        seed = None if req.seed is None else (req.seed + index) % 2**32
        return RequestParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                             top_k=max(0, req.top_k), seed=seed, stop=stop_strings(req.stop),
                             stop_token_ids=stop_ids, logprobs=top is not None)
