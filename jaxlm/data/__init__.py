"""Data pipeline: lazy sources, on-the-fly filters and tokenization, packing, mixtures, exact resume.

    from jaxlm.data import make_batch_iterator, make_eval_iterator
    from jaxlm.tokenizer import load_tokenizer, check_vocab
    tok = load_tokenizer(run_cfg.data.tokenizer, run_cfg.data.tokenizer_kind)
    check_vocab(run_cfg.model.vocab_size, tok)
    it = make_batch_iterator(run_cfg.data, tok, seq_len=256, batch_size=8, seed=run_cfg.seed)

The iterators are imported lazily so that reading a config does not load Grain or the tokenizers.
"""

from jaxlm.data.config import DataConfig, FilterConfig, PhaseConfig, SourceConfig

__all__ = ["BatchIterator", "DataConfig", "FilterConfig", "PhaseConfig", "SourceConfig", "make_batch_iterator",
           "make_eval_iterator"]


def __getattr__(name: str):
    if name in ("BatchIterator", "make_batch_iterator", "make_eval_iterator"):
        # lazy: reading a config must not load Grain and the tokenizers
        from jaxlm.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'jaxlm.data' has no attribute {name!r}")
