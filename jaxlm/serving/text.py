"""Incremental detokenization with stop strings: the text delta each new token adds.

Decoding one token alone loses what depends on its neighbours (sentencepiece's leading space, a
multi-byte character split over tokens), so each step decodes a short window of ids twice, up to
the last read token and up to the new one, and emits the difference (the approach of Hugging
Face's text-generation-inference). The window starts with the prompt's last few tokens, as
`LanguageModel.continuation_text` does, so the deltas join to the same continuation text.
A delta ending in U+FFFD (an incomplete UTF-8 character) waits for the next token.

Stop strings: text that could still be the start of a stop string is held back; when a stop
string appears, the text before it is released and the request ends; the stop string itself is
never emitted.
"""

from __future__ import annotations

from collections.abc import Sequence

CONTEXT_TOKENS = 4  # prompt tokens decoded before the new ones (as continuation_text)


class TextStream:
    def __init__(self, tokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.ids = [t for t in prompt_ids[-CONTEXT_TOKENS:] if t != tokenizer.bos_id]
        self.prefix, self.read = 0, len(self.ids)  # window start; ids before `read` are in the text
        self.stop = tuple(stop)
        self.pending = ""  # decoded, not yet released (may be the start of a stop string)
        self.text = ""  # released so far

    def push(self, token: int) -> tuple[str, bool]:
        """Add one generated token: (text released now, whether a stop string ended the text)."""
        self.ids.append(int(token))
        self._decode_new(final=False)
        return self._release()

    def flush(self) -> str:
        """At the end of the request: release whatever is held (a stop string in it is still cut)."""
        self._decode_new(final=True)
        out, _ = self._release()
        out += self.pending
        self.text += self.pending
        self.pending = ""
        return out

    def _decode_new(self, final: bool) -> None:
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        after = self.tokenizer.decode(self.ids[self.prefix:])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.pending += after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)

    def _release(self) -> tuple[str, bool]:
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out = self.pending[:min(hits)]
            self.text += out
            self.pending = ""
            return out, True
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        self.text += out
        return out, False
