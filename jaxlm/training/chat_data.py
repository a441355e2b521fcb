"""The trainer's data for `posttrain.objective` sft / dpo / simpo: chat records rendered through the chat
template (jaxlm.posttrain), as batch and validation sources with the interface of jaxlm.data's, and the
run's tokenizer carrying that template (so the run dir, its exports and `jaxlm generate --chat` use it).
Every check here runs before the trainer writes anything."""

from __future__ import annotations

from jaxlm.errors import ConfigError
from jaxlm.posttrain.batches import ChatBatches, ChatExamples, chat_eval_pass, chat_template, with_chat_template


def chat_sources(run_cfg, tokenizer, batch_source, eval_source):
    """-> (tokenizer, batch_source, eval_source, notes) for a post-training run; the given sources win."""
    cfg, tc = run_cfg.posttrain, run_cfg.train
    if not cfg.train_data and batch_source is None:
        raise ConfigError(f"posttrain.objective={cfg.objective} needs posttrain.train_data (a .jsonl or .parquet file "
                          f"of chat records); set it, or posttrain.objective=pretrain")
    if cfg.objective == "dpo" and not tc.init_from:
        raise ConfigError("posttrain.objective=dpo needs a reference model, and this run starts from random weights; "
                          "set train.init_from to the SFT run or model dir (the policy starts from it and it is the "
                          "reference), or use posttrain.objective=simpo, which needs none")
    if tokenizer is None:  # batches and validation given by the caller (tests)
        return tokenizer, batch_source, eval_source, []
    tokenizer = with_chat_template(tokenizer, chat_template(cfg, tokenizer))
    notes = []
    if batch_source is None:
        train = ChatExamples(cfg, tokenizer, cfg.train_data, tc.seq_len)
        notes += train.notes("posttrain.train_data")
        batch_source = lambda pi, pc, b: ChatBatches(train, b, run_cfg.seed, pi, pc)  # noqa: E731
    if eval_source is None and tc.eval_every:
        if not cfg.validation_data:
            raise ConfigError("train.eval_every validates a post-training run on posttrain.validation_data, which is "
                              "not set; give held-back records, or set train.eval_every=0")
        held_back = ChatExamples(cfg, tokenizer, cfg.validation_data, tc.seq_len)
        notes += held_back.notes("posttrain.validation_data")
        eval_source = lambda pi, pc, b: chat_eval_pass(held_back, b, pi, pc)  # noqa: E731
    return tokenizer, batch_source, eval_source, notes
