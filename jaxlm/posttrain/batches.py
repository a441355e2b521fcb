"""Batches of chat rows for the trainer, with the interface of jaxlm.data's iterators.

`make_chat_batches` reads, renders and tokenizes the whole chat set once (every process the same), then
serves batch k of an endless sequence of epochs: each epoch shuffles the examples (seed + epoch) and, for
SFT, packs them; process p takes its rows of the global batch. The state is the batch count alone, so a
resume (on any number of processes) continues exactly. `chat_eval_pass` is one pass over the validation
records, in order, padded with empty rows.
"""

from __future__ import annotations

import copy
from types import MappingProxyType

import numpy as np

from jaxlm.assets import resolve_path
from jaxlm.data import packing
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.posttrain import rows
from jaxlm.posttrain.formats import load_chat_set
from jaxlm.posttrain.render import ChatRenderer


def chat_template(cfg, tokenizer) -> str:
    """posttrain.chat_template (a file, bundled: path or Jinja text), else the tokenizer's own."""
    source = cfg.chat_template
    if source is None:
        if not tokenizer.chat_template:
            raise ConfigError("the model's tokenizer has no chat template (no chat_template in its tokenizer_config."
                              "json); set posttrain.chat_template to a Jinja file (e.g. bundled:chat/turns.jinja)")
        return tokenizer.chat_template
    if "{{" in source or "{%" in source:
        return source
    path = resolve_path(source)
    if not path.is_file():
        raise ConfigError(f"posttrain.chat_template {source} is not a file; give a Jinja file or the template text")
    return path.read_text(encoding="utf-8")


def with_chat_template(tokenizer, template: str):
    """A copy of the tokenizer whose tokenizer_config.json carries `template` (run dir, exports, chat)."""
    out = copy.copy(tokenizer)
    out.hf_config = MappingProxyType({**tokenizer.hf_config, "chat_template": template})
    return out


class ChatExamples:
    """The tokenized examples of one chat file and what became of the others."""

    def __init__(self, cfg, tokenizer, path: str, seq_len: int):
        chat_set = load_chat_set(path, cfg.preference)
        renderer = ChatRenderer(tokenizer, chat_template(cfg, tokenizer), cfg.train_on)
        self.preference, self.seq_len, self.pad_id, self.too_long = (cfg.preference, seq_len, tokenizer.pad_id,
                                                                     cfg.too_long)
        self.counts = {"records": len(chat_set.examples) + chat_set.dropped_identical,
                       "identical_pairs": chat_set.dropped_identical}
        self.examples = []
        for example in chat_set.examples:
            kept = self._fit(renderer, example, cfg.too_long)
            if kept is not None:
                self.examples.append(kept)
        if not self.examples:
            raise JaxlmError(f"no example of {path} fits train.seq_len {seq_len} ({self.counts}); raise "
                             f"train.seq_len or set posttrain.too_long=truncate")

    def _fit(self, renderer, example, too_long: str):
        if not self.preference:
            return rows.fit(renderer.encode(example), self.seq_len, too_long, self.counts)
        sides = [renderer.encode_pair_side(example.prompt, answer) for answer in (example.chosen, example.rejected)]
        limit = self.seq_len
        if sum(len(ids) for ids, _ in sides) > self.seq_len:  # the two sides share one row
            self.counts["too_long"] = self.counts.get("too_long", 0) + 1
            if too_long == "drop":
                return None
            limit = self.seq_len // 2
        kept = [rows.fit(side, limit, "truncate", {}) for side in sides]
        if None in kept:
            self.counts["no_target"] = self.counts.get("no_target", 0) + 1
            return None
        return tuple(kept)

    def epoch_rows(self, order: np.ndarray) -> list[list[int]]:
        if self.preference:
            return [[int(i)] for i in order]
        return rows.pack_plan([len(ids) for ids, _ in self.examples], order, self.seq_len)

    def row(self, members: list[int]) -> dict[str, np.ndarray]:
        if self.preference:
            return rows.pair_row(*self.examples[members[0]], self.seq_len, self.pad_id)
        return rows.sft_row([self.examples[i] for i in members], self.seq_len, self.pad_id)

    def notes(self, label: str) -> list[str]:
        dropped = {k: v for k, v in self.counts.items() if k != "records" and v}
        if not dropped:
            return []
        why = {"identical_pairs": "dropped with chosen identical to rejected", "no_target": "dropped with no answer "
               "token left", "too_long": f"longer than train.seq_len {self.seq_len}, "
               f"{ {'drop': 'dropped', 'truncate': 'truncated'}[self.too_long]} (posttrain.too_long)"}
        return [f"{label}: {len(self.examples)} of {self.counts['records']} records used; " + ", ".join(
            f"{v} {why[k]}" for k, v in dropped.items())]


class ChatBatches:
    """Endless training batches of this process's rows (batch_size rows each), resumable from get_state."""

    global_state = True  # the state means the same for any process count (the trainer may resume on more)

    def __init__(self, examples: ChatExamples, batch_size: int, seed: int, process_index: int, process_count: int):
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.process_index, self.process_count = process_index, process_count
        self.step, self._plans = 0, {}  # epoch -> rows (example indices); the last two kept

    def __iter__(self):
        return self

    def _plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples.examples))
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}
            self._plans[epoch] = self.examples.epoch_rows(order)
        return self._plans[epoch]

    def _global_row(self, index: int) -> dict[str, np.ndarray]:
        epoch = 0
        while index >= len(self._plan(epoch)):  # epochs before the current one are cheap to re-plan
            index -= len(self._plan(epoch))
            epoch += 1
        return self.examples.row(self._plan(epoch)[index])

    def __next__(self) -> dict[str, np.ndarray]:
        first = (self.step * self.process_count + self.process_index) * self.batch_size
        local = [self._global_row(first + r) for r in range(self.batch_size)]
        self.step += 1
        return {f: np.stack([row[f] for row in local]) for f in packing.FIELDS}

    def get_state(self) -> dict:
        return {"kind": "chat", "step": self.step}

    def set_state(self, state: dict) -> None:
        if state.get("kind") != "chat":
            raise JaxlmError("the checkpoint's data state is not a chat-data state (posttrain.objective changed?); "
                             "resume with the same posttrain section, or start a new train.out_dir")
        self.step = int(state["step"])



def chat_eval_pass(examples: ChatExamples, batch_size: int, process_index: int, process_count: int,
                   num_batches: int | None = None):
    """One pass over `examples` in order (this process's rows of each global batch); the last batches are
    padded with empty rows, up to exactly `num_batches` when given."""
    plan = examples.epoch_rows(np.arange(len(examples.examples)))
    total = -(-len(plan) // (batch_size * process_count))
    for k in range(total if num_batches is None else num_batches):
        first = (k * process_count + process_index) * batch_size
        local = [examples.row(plan[i]) if i < len(plan) else packing.empty_row(examples.seq_len, examples.pad_id)
                 for i in range(first, first + batch_size)]
        yield {f: np.stack([row[f] for row in local]) for f in packing.FIELDS}

