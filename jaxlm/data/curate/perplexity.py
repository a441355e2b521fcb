"""The perplexity stage: each document's perplexity under a jaxlm model (CCNet's score, our model in
place of KenLM), computed in the main process through the compiled scorer.

The data package sits below the model and inference packages, so this module takes the scoring as a
function the caller builds (`jaxlm.cli.data_curate` uses `jaxlm.inference.Scorer.document_perplexities`
on the loaded model): `score(token_lists) -> perplexities`. It owns the rules: which tokenizer encodes
(data.tokenizer, unless the model's own encodes differently: then an error, or with `retokenize: true`
the model's tokenizer), how many tokens are scored (the first `max_tokens`, bos included), and the
tokens/s count.
"""

from __future__ import annotations

import time

import numpy as np

from jaxlm.data.curate.config import PerplexityConfig
from jaxlm.errors import JaxlmError


def choose_tokenizer(data_tok, model_tok, cfg: PerplexityConfig, fingerprint) -> object:
    """The tokenizer that encodes for the model: data.tokenizer when it encodes as the model's does."""
    if fingerprint(data_tok) == fingerprint(model_tok):
        return data_tok
    if cfg.retokenize:
        return model_tok
    raise JaxlmError(f"perplexity model {cfg.model} has another tokenizer than data.tokenizer ({model_tok.kind}, "
                     f"{model_tok.vocab_size} ids vs {data_tok.kind}, {data_tok.vocab_size}); use a model trained "
                     f"with data.tokenizer or set data.curate.perplexity.retokenize=true")


class PerplexityStage:
    def __init__(self, score, tokenizer, cfg: PerplexityConfig):
        self.score, self.tokenizer, self.cfg = score, tokenizer, cfg
        self.seconds = 0.0
        self.tokens = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        t0 = time.perf_counter()
        docs = [ids[:self.cfg.max_tokens] for ids in self.tokenizer.encode_batch(texts, add_bos=True)]
        out = np.asarray(self.score(docs, self.cfg.batch_size), np.float64)
        self.tokens += sum(len(d) for d in docs)
        self.seconds += time.perf_counter() - t0
        return out

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0
