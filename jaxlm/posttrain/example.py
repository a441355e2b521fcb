"""The bundled post-training example, built from the bundled plays: an instruction set (SFT) and a
preference set (DPO), each with a held-back split. `jaxlm data chat-example --out runs/chat_data` writes
what configs/sft_plays.yaml and dpo_plays.yaml read.

Every speech of two lines or more in the 8 training plays gives one example: the user asks "Continue this
speech by ROMEO: <its first line>" and the assistant answers with the true next line. Preference pairs have
the same prompts; chosen = the true next line, rejected = a line of about the same length from another
play. A second preference set (dpo_order_*.jsonl) rejects the true line with its words shuffled: the same
words, only the order tells the pair apart, which a 4M-parameter model can learn where it barely tells
one play's line from another's (experiments/results/posttrain_plays.md). Every 10th speech is held back
(sft_valid.jsonl, dpo_valid.jsonl, dpo_order_valid.jsonl). Deterministic (seed 0).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from jaxlm.assets import resolve_path

HELD_BACK_EVERY = 10
SPEAKER = re.compile(r"^([A-Z][A-Za-z' ]{1,30}|\d [A-Z][a-z]+)\.$")


def speeches(text: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) of every speech: a paragraph headed by "Name." whose lines are not stage directions."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.strip().splitlines()]
        if len(lines) < 3 or not SPEAKER.match(lines[0]):
            continue
        spoken = [line for line in lines[1:] if line and not line.startswith("[")]
        if len(spoken) >= 2 and all(4 <= len(line) <= 80 for line in spoken[:2]):
            out.append((lines[0][:-1].upper(), spoken))
    return out


def build(out: Path, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    order_rng = random.Random(seed + 1)  # its own stream: the other files stay as they were without it
    plays = {f.stem: speeches(f.read_text(encoding="utf-8"))
             for f in sorted(resolve_path("bundled:corpus/train").glob("*.txt"))}
    files = {name: [] for name in ("sft_train", "sft_valid", "dpo_train", "dpo_valid", "dpo_order_train",
                                   "dpo_order_valid")}
    for play, play_speeches in plays.items():
        others = [line for other, s in plays.items() if other != play for _, lines in s for line in lines[1:2]]
        for i, (speaker, lines) in enumerate(play_speeches):
            split = "valid" if i % HELD_BACK_EVERY == HELD_BACK_EVERY - 1 else "train"
            prompt = f"Continue this speech by {speaker}: {lines[0]}"
            answer = lines[1]
            files[f"sft_{split}"].append({"messages": [{"role": "user", "content": prompt},
                                                       {"role": "assistant", "content": answer}]})
            rejected = _similar_length(rng, others, len(answer))
            if rejected != answer:
                files[f"dpo_{split}"].append({"prompt": prompt, "chosen": answer, "rejected": rejected})
            shuffled = _shuffled_words(order_rng, answer)
            if shuffled is not None:
                files[f"dpo_order_{split}"].append({"prompt": prompt, "chosen": answer, "rejected": shuffled})
    out.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        rng.shuffle(records)
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return {name: len(records) for name, records in files.items()}


def _shuffled_words(rng: random.Random, line: str) -> str | None:
    """The line's words in another order (None for a line of fewer than 3 words)."""
    words = line.split()
    if len(words) < 3:
        return None
    shuffled = words[:]
    while shuffled == words:
        rng.shuffle(shuffled)
    return " ".join(shuffled)


def _similar_length(rng: random.Random, lines: list[str], length: int) -> str:
    """A random line within 30% of `length` characters (so length alone does not tell the pair apart)."""
    for _ in range(100):
        line = rng.choice(lines)
        if abs(len(line) - length) <= 0.3 * length:
            return line
    return rng.choice(lines)
