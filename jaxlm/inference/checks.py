"""Argument checks for the inference API and the CLI flags that reach it: one rule per argument.

Each check runs where an argument enters (`jaxlm.load`, `LanguageModel.*`, `Engine.generate`,
`SamplingParams`), before any tokenizing or compiling. A failure is an `ArgumentTypeError` or
`ArgumentValueError`: a `JaxlmError` (the CLI prints it as one line, exit 2) that is also the builtin
`TypeError` / `ValueError` a Python caller expects, naming the argument, the value and what is allowed.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence

import numpy as np

from jaxlm.errors import ArgumentTypeError, ArgumentValueError, short_repr
from jaxlm.model.config import ModelConfig

SEED_MAX = 2**32 - 1  # jax.random.key keeps 32 bits (no x64): seed 2**32 would give seed 0's numbers
INT32_MIN = -(2**31)  # stop ids live in an int32 matrix
FLOAT32_MAX = float(np.finfo(np.float32).max)  # knobs enter the compiled programs as float32


def shown(value) -> str:
    """The value as a message shows it: its repr (cut short) and, for odd types, the type."""
    text = short_repr(value, 60)  # bounded: a giant nested list must not hang the message
    plain = value is None or isinstance(value, (bool, int, float, str))
    return text if plain else f"{text} (a {type(value).__name__})"


def _span(low, high, low_open: bool, kind: str, note: str) -> str:
    """'>= 1 (an integer)', 'in (0, 1] (a finite number; 1 = off)', 'a non-negative integer (0 = off)'."""
    if kind == "an integer" and low == 0 and high is None:
        return "a non-negative integer" + (f" ({note})" if note else "")
    kind += f"; {note}" if note else ""
    if high is None:
        return f"{'>' if low_open else '>='} {low} ({kind})"
    return f"in {'(' if low_open else '['}{low}, {high}] ({kind})"


def integer(name: str, value, low: int, high: int | None = None, note: str = "") -> int:
    """value as an int in [low, high] (no upper bound if high is None); bools are not integers."""
    rule = f"{name} must be {_span(low, high, False, 'an integer', note)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{rule}, got {shown(value)}")
    if value < low or (high is not None and value > high):
        raise ArgumentValueError(f"{rule}, got {value}")
    return int(value)


def number(name: str, value, low: float, high: float | None = None, *, low_open: bool = False,
           note: str = "") -> float:
    """value as a finite float in [low, high] (or (low, high] with low_open)."""
    rule = f"{name} must be {_span(low, high, low_open, 'a finite number', note)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{rule}, got {shown(value)}")
    v = float(value)
    inside = v > low if low_open else v >= low
    if not (math.isfinite(v) and abs(v) <= FLOAT32_MAX and inside and (high is None or v <= high)):
        raise ArgumentValueError(f"{rule}, got {value}")
    return v


def model(name: str, value):
    """A jaxlm model: an nnx.Module carrying its ModelConfig as `.cfg`."""
    if not isinstance(getattr(value, "cfg", None), ModelConfig):
        raise ArgumentTypeError(f"{name} must be a jaxlm model (jaxlm.load(path).model, or the model that "
                                f"jaxlm.checkpoint.load_model returns), got {shown(value)}")
    return value


def choice(name: str, value, allowed: Sequence[str], what: str) -> str:
    """One of the allowed strings."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be one of {', '.join(allowed)}, got {shown(value)}")
    if value not in allowed:
        raise ArgumentValueError(f"unknown {what} {value!r}; {name} must be one of {', '.join(allowed)}")
    return value


def path(name: str, value) -> str | os.PathLike:
    """A str or os.PathLike (the caller resolves `bundled:` with jaxlm.assets.resolve_path)."""
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name} must be a path (a str or pathlib.Path; bundled:... works), got {shown(value)}")
    return value


def text(name: str, value) -> str:
    """A non-empty str."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str, got {shown(value)}")
    if not value:
        raise ArgumentValueError(f"{name} is empty; give some text")
    return unicode(name, value)


def unicode(name: str, value: str) -> str:
    """A str that UTF-8 can encode: no lone surrogates (what bytes decoded with errors="surrogateescape",
    e.g. non-UTF-8 stdin, leave behind), which the tokenizers cannot take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ArgumentValueError(f"{name} is not valid Unicode text: it holds the lone surrogate "
                                 f"{value[e.start]!r} at position {e.start} (bytes that are not UTF-8?); "
                                 f"decode the input as UTF-8") from None
    return value


def texts(name: str, value) -> list[str]:
    """One str or a non-empty list of them -> the list."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence):
        raise ArgumentTypeError(f"{name} must be a str or a list of str, got {shown(value)}")
    if not value:
        raise ArgumentValueError(f"{name} is an empty list; give at least one prompt")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ArgumentTypeError(f"{name} {i} must be a str, got {shown(item)}; use generate_ids for token ids")
        unicode(f"{name} {i}", item)
    return list(value)


def token_ids(name: str, value, vocab_size: int, low: int = 0) -> list[int]:
    """A list (or 1-D array) of ints, each in [low, vocab_size)."""
    value = value.tolist() if isinstance(value, np.ndarray) and value.ndim == 1 else value
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ArgumentTypeError(f"{name} must be a list of token ids (ints), got {shown(value)}")
    for t in value:
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise ArgumentTypeError(f"{name} must be a list of token ids (ints), got an element {shown(t)}")
        if not low <= t < vocab_size:
            raise ArgumentValueError(f"{name} has token id {t} outside the model's vocabulary [0, {vocab_size}); "
                                     f"check that the tokenizer matches the model")
    return [int(t) for t in value]


def prompt_ids(prompts, vocab_size: int) -> list[list[int]]:
    """A non-empty list of non-empty token-id lists (one per prompt)."""
    if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
        prompts = prompts.tolist()
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ArgumentTypeError(f"prompts must be a list of token-id lists, got {shown(prompts)}; for text use "
                                f"generate")
    if not prompts:
        raise ArgumentValueError("no prompts given; pass at least one prompt")
    out = [token_ids(f"prompt {i}", p, vocab_size) for i, p in enumerate(prompts)]
    for i, p in enumerate(out):
        if not p:
            raise ArgumentValueError(f"prompt {i} is empty; give at least one token (e.g. the BOS token)")
    return out


def stop_tokens(value, vocab_size: int) -> list[int] | list[list[int]]:
    """Ids that end generation: one list for every row, or one list per row. A negative id never
    matches (callers use [-1] for "no stop"); one at or past the vocabulary is a mismatch."""
    value = value.tolist() if isinstance(value, np.ndarray) else value
    per_row = isinstance(value, Sequence) and bool(value) and all(isinstance(r, (list, tuple)) for r in value)
    if per_row:
        return [token_ids(f"stop_tokens[{i}]", r, vocab_size, INT32_MIN) for i, r in enumerate(value)]
    return token_ids("stop_tokens", value, vocab_size, INT32_MIN)


def callback(name: str, value):
    """None or a callable."""
    if value is not None and not callable(value):
        raise ArgumentTypeError(f"{name} must be a function or None, got {shown(value)}")
    return value


def flag(name: str, value) -> bool:
    """A bool (not a truthy string such as "false")."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {shown(value)}")
    return bool(value)


def messages(value) -> list[Mapping]:
    """A conversation: a non-empty list of {"role": str, "content": str} dicts.

    content may also be a list of parts (multimodal templates), and may be left out or None only on a
    message carrying tool_calls, as transformers' templates expect.
    """
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise ArgumentTypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {shown(value)}")
    if not value:
        raise ArgumentValueError("messages is empty; give at least one {'role': 'user', 'content': ...} message")
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ArgumentTypeError(f"message {i} must be a dict with a 'role' string and a 'content', "
                                    f"got {shown(m)}")
        content = m.get("content")
        if not (isinstance(content, (str, list)) or content is None and m.get("tool_calls")):
            raise ArgumentTypeError(f"message {i}'s content must be a str (or a list of parts), got {shown(content)}")
        if isinstance(content, str):
            unicode(f"message {i}'s content", content)
        bad = next((p for p in content if not isinstance(p, Mapping)), None) if isinstance(content, list) else None
        if bad is not None:
            raise ArgumentTypeError(f"message {i}'s content parts must be dicts such as "
                                    f"{{'type': 'text', 'text': ...}}, got a part {shown(bad)}")
    return list(value)


def scoring_windows(seq_len, batch_size, max_context: int) -> None:
    """perplexity's window width (None = the model's context - 1; 0 is not "default") and batch size."""
    if seq_len is not None:
        integer("seq_len", seq_len, 1, max_context - 1, note="None = the model's context - 1")
    integer("batch_size", batch_size, 1)
