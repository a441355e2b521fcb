"""Conversations through the chat template -> token ids and the assistant-token mask.

The text is the one `apply_chat_template` renders (jaxlm.tokenizer.chat_template). Which characters
are the assistant's:
  - a template with `{% generation %}` blocks marks them itself (what transformers'
    `return_assistant_tokens_mask=True` reads);
  - otherwise each assistant turn is the text that turn adds to the conversation rendered up to it
    with the generation prompt: its content and the end-of-turn marker the template writes after it,
    so the model learns to stop.
The text is encoded piece by piece at the span edges, special-token strings as their ids and no BOS
added (the template writes `bos_token`), so each token lies wholly inside or outside the assistant text.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxlm.errors import JaxlmError
from jaxlm.tokenizer.chat_template import GENERATION_TAG, render_chat, render_with_generation_spans


@dataclasses.dataclass(frozen=True)
class ChatRenderer:
    tokenizer: object
    template: str
    train_on: str = "assistant"  # "assistant" | "all"

    def render(self, messages, add_generation_prompt: bool = False) -> str:
        return render_chat(self.template, list(messages), self.tokenizer.special_tokens_map,
                           add_generation_prompt=add_generation_prompt)

    def spans(self, messages) -> tuple[str, list[tuple[int, int]]]:
        """(text, assistant character spans) of a whole conversation."""
        if GENERATION_TAG.search(self.template):
            return render_with_generation_spans(self.template, list(messages), self.tokenizer.special_tokens_map,
                                                add_generation_prompt=False)
        text, spans = self.render(messages), []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if i == 0:
                raise JaxlmError("a conversation starts with an assistant turn, which this chat template cannot "
                                 "separate from its prompt; start with a user (or system) turn")
            spans.append(self.turn_span(text, messages[:i], messages[:i + 1]))
        return text, spans

    def turn_span(self, text: str, before, through) -> tuple[int, int]:
        """Where the last turn of `through` sits in `text`: after the prompt of `before`, up to its end."""
        prompt, done = self.render(before, add_generation_prompt=True), self.render(through)
        if not (text.startswith(prompt) and text.startswith(done) and len(done) > len(prompt)):
            raise JaxlmError("the chat template renders a conversation's start differently once later turns follow, "
                             "so the assistant's tokens cannot be found from prefixes; mark them with {% generation "
                             "%} ... {% endgeneration %} in the template")
        return len(prompt), len(done)

    def encode(self, messages) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) int32 / bool of one conversation; mask marks the tokens the loss is taken on."""
        text, spans = self.spans(messages)
        ids, mask = self.encode_spans(text, spans)
        if self.train_on == "all":
            mask[:] = True
        return ids, mask

    def encode_pair_side(self, prompt, answer) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) of prompt + answer, the mask on the answer (its end-of-turn marker included)."""
        messages = list(prompt) + list(answer)
        text = self.render(messages)
        return self.encode_spans(text, [self.turn_span(text, prompt, messages)])

    def encode_spans(self, text: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        ids, mask, at = [], [], 0
        for start, end in sorted(spans):
            for piece, inside in ((text[at:start], False), (text[start:end], True)):
                piece_ids = self.tokenizer.encode_special(piece) if piece else []
                ids += piece_ids
                mask += [inside] * len(piece_ids)
            at = end
        tail = self.tokenizer.encode_special(text[at:]) if at < len(text) else []
        return np.asarray(ids + tail, np.int32), np.asarray(mask + [False] * len(tail), bool)
