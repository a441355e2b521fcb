"""Log-probabilities of given tokens, and perplexity of a long token stream.

One compiled forward pass per fixed-shape batch (no cache): windows are padded to the same
width and masked, so a whole file goes through a handful of identical calls.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.errors import JaxlmError
from jaxlm.inference import checks


class Scorer:
    """Teacher-forced log-probabilities under a model."""

    def __init__(self, model: nnx.Module):
        self.cfg = model.cfg
        graphdef, self.state = nnx.split(model)
        self._logprobs = jax.jit(functools.partial(_target_logprobs, graphdef))
        self._continuations = jax.jit(functools.partial(_continuation_scores, graphdef), static_argnames="k")

    def continuation_scores(self, ids: np.ndarray, ends: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The last k tokens before each row's end, scored: ids (B, W) int32, ends (B,) -> (log p(ids[b, e-k+j] |
        ids[b, :e-k+j]) (B, k) float32, whether each is the most likely token (B, k) bool), e = ends[b].
        Only those B * k positions go through the output layer. Targets at position 0 (nothing
        before them) come back as 0 / False. One compiled call per (B, W, k): callers bucket them."""
        lp, top = self._continuations(self.state, jnp.asarray(ids, jnp.int32), jnp.asarray(ends, jnp.int32), k=k)
        return np.asarray(lp), np.asarray(top)

    def token_logprobs(self, tokens: list[int]) -> np.ndarray:
        """log p(tokens[i] | tokens[:i]) for i = 1 .. n-1: (n - 1,) float32. Needs n >= 2."""
        if len(tokens) < 2:
            raise JaxlmError("scoring needs at least 2 tokens (the first one is only context); give longer text "
                             "or keep the BOS token")
        if len(tokens) > self.cfg.max_context:
            raise JaxlmError(f"text has {len(tokens)} tokens, over the model's context of {self.cfg.max_context}; "
                             f"use perplexity() for long text, which scores it in windows")
        width = min(_round_up(len(tokens), 32), self.cfg.max_context)
        ids = np.zeros((1, width), np.int32)
        ids[0, :len(tokens)] = tokens
        mask = np.zeros((1, width - 1), np.float32)
        mask[0, :len(tokens) - 1] = 1
        out = self._logprobs(self.state, jnp.asarray(ids), jnp.asarray(mask))
        return np.asarray(out)[0, :len(tokens) - 1]

    def perplexity(self, tokens: list[int], seq_len: int | None = None, batch_size: int = 8
                   ) -> tuple[float, int]:
        """exp(mean negative log-likelihood) over a token stream -> (perplexity, tokens scored).

        The stream is cut into non-overlapping windows of seq_len + 1 tokens (each window predicts its
        last seq_len tokens from the ones before, within the window), as training sees text. Calls are
        as wide and as tall as the text needs, in power-of-two buckets (a short file on a long-context
        model is not padded to the whole context and batch), so a file compiles a few shapes at most.
        """
        checks.scoring_windows(seq_len, batch_size, self.cfg.max_context)  # seq_len 0 is refused, not "default"
        seq_len = seq_len or self.cfg.max_context - 1
        if not 1 <= seq_len < self.cfg.max_context:
            raise JaxlmError(f"seq_len must be in [1, {self.cfg.max_context - 1}] (the model's context - 1), "
                             f"got {seq_len}")
        if len(tokens) < 2:
            raise JaxlmError("perplexity needs at least 2 tokens of text; give a longer file")
        windows = [tokens[i:i + seq_len + 1] for i in range(0, len(tokens) - 1, seq_len)]
        windows = [w for w in windows if len(w) >= 2]
        width = min(_bucket(max(len(w) for w in windows) - 1, 32), seq_len)  # targets per row
        total, count = 0.0, 0
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            rows = min(_bucket(len(chunk), 1), batch_size)
            ids = np.zeros((rows, width + 1), np.int32)
            mask = np.zeros((rows, width), np.float32)
            for i, w in enumerate(chunk):
                ids[i, :len(w)] = w
                mask[i, :len(w) - 1] = 1
            lp = np.asarray(self._logprobs(self.state, jnp.asarray(ids), jnp.asarray(mask)))
            total -= float(lp.sum(dtype=np.float64))
            count += int(mask.sum())
        return math.exp(total / count), count

    def document_perplexities(self, docs: list[list[int]], batch_size: int = 16) -> np.ndarray:
        """exp(mean negative log-likelihood) of each document on its own -> (len(docs),) float64; NaN for a
        document of fewer than 2 tokens. Documents longer than the model's context are cut to it (callers
        choose how many tokens to score). Batches of `batch_size` documents in the given order, each padded
        to batch_size rows and a power-of-two width: a corpus compiles a few shapes, and a document's score
        does not depend on the documents around it."""
        checks.scoring_windows(None, batch_size, self.cfg.max_context)
        docs = [d[:self.cfg.max_context] for d in docs]
        out = np.full(len(docs), np.nan)
        for start in range(0, len(docs), batch_size):
            chunk = docs[start:start + batch_size]
            width = min(_bucket(max(len(d) for d in chunk), 32), self.cfg.max_context)
            ids = np.zeros((batch_size, width), np.int32)
            mask = np.zeros((batch_size, width - 1), np.float32)
            for i, d in enumerate(chunk):
                ids[i, :len(d)] = d
                mask[i, :max(len(d) - 1, 0)] = 1
            lp = np.asarray(self._logprobs(self.state, jnp.asarray(ids), jnp.asarray(mask)), np.float64)
            counts = mask.sum(axis=1)
            for i in range(len(chunk)):
                if counts[i] > 0:
                    out[start + i] = math.exp(-lp[i].sum() / counts[i])
        return out


def _bucket(n: int, smallest: int) -> int:
    """The power of two >= n (and >= smallest): the padded sizes a scoring pass compiles for."""
    return max(smallest, 1 << (n - 1).bit_length())


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _continuation_scores(graphdef, state, ids, ends, *, k: int):
    """ids (B, W), ends (B,) -> log-probs and argmax hits (B, k) of targets ends-k .. ends-1."""
    model = nnx.merge(graphdef, state)
    b = ids.shape[0]
    # (B, W - 1, D): the last token is only ever a target. Each row's LongRoPE factors follow its own fed
    # length (ends - 1 tokens, as lm-eval's hf model feeds them), not the padded width.
    hidden = model.hidden_states(ids[:, :-1], seq_lengths=jnp.maximum(ends - 1, 1))
    targets = ends[:, None] - k + jnp.arange(k)[None, :]  # (B, k) positions of the scored tokens
    valid = targets >= 1
    sources = jnp.maximum(targets - 1, 0)  # the position whose output predicts each target
    rows = jnp.arange(b)[:, None]
    logp = jax.nn.log_softmax(model.logits(hidden[rows, sources]), axis=-1)  # (B, k, V) float32
    want = ids[rows, jnp.maximum(targets, 0)]
    picked = jnp.take_along_axis(logp, want[..., None], axis=-1)[..., 0]
    return jnp.where(valid, picked, 0.0), valid & (jnp.argmax(logp, axis=-1) == want)


def _target_logprobs(graphdef, state, ids, mask):
    """ids (B, T+1), mask (B, T) -> (B, T) log p(ids[:, 1:] | prefix), zero where mask is 0."""
    model = nnx.merge(graphdef, state)
    fed = jnp.maximum(jnp.sum(mask, axis=-1).astype(jnp.int32), 1)  # real tokens per row, for LongRoPE's choice
    logits = model.logits(model.hidden_states(ids[:, :-1], seq_lengths=fed))  # (B, T, V) float32
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return picked * mask
