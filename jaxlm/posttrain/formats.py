"""Chat records in the Hugging Face formats, read from JSONL or Parquet files, checked and put in one shape.

    {"messages": [{"role", "content"}, ...]}                   conversational (an optional system turn)
    {"prompt": ..., "completion": ...}                         prompt / completion: strings or message lists
    {"prompt": ..., "chosen": ..., "rejected": ...}            preference: strings or message lists

A string prompt is one user turn and a string completion / chosen / rejected one assistant turn, so
every record renders through the chat template. SFT records become `messages` lists; preference records
become `Pair(prompt, chosen, rejected)` of message lists. A record that breaks a rule stops the run with
one line naming the file, the record and the fix; a pair whose chosen equals its rejected is dropped and
counted. The files are read whole: chat sets are small next to pretraining corpora.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jaxlm.assets import resolve_path
from jaxlm.errors import JaxlmError

ROLES = ("system", "user", "assistant", "tool")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclasses.dataclass(frozen=True)
class Pair:
    prompt: tuple  # messages before the answer (ends with a user turn)
    chosen: tuple  # the preferred answer: assistant messages
    rejected: tuple


@dataclasses.dataclass
class ChatSet:
    examples: list  # SFT: message lists; preference: Pairs
    dropped_identical: int = 0  # preference pairs whose chosen equals the rejected


def read_records(path: str) -> list[tuple[str, dict]]:
    """(where, record) for every record of a file, or of every .jsonl / .parquet file under a folder."""
    root = resolve_path(path)
    if not root.exists():
        raise JaxlmError(f"chat data {path} does not exist; give a .jsonl or .parquet file (or a folder of them)")
    files = sorted(f for f in root.rglob("*") if f.suffix in _SUFFIXES and f.is_file()) if root.is_dir() else [root]
    if not files or files[0].suffix not in _SUFFIXES:
        raise JaxlmError(f"chat data {path} has no .jsonl or .parquet file; give records in one of those formats")
    records = []
    for f in files:
        rows = _read_parquet(f) if _SUFFIXES[f.suffix] == "parquet" else _read_jsonl(f)
        records += [(f"{f.name} record {i + 1}", r) for i, r in enumerate(rows)]
    if not records:
        raise JaxlmError(f"chat data {path} holds no records; add some, one JSON object per line")
    return records


def _read_jsonl(f: Path) -> list[dict]:
    rows = []
    try:
        lines = f.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise JaxlmError(f"chat data {f} is not UTF-8 text; save it as UTF-8 JSONL") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise JaxlmError(f"chat data {f} line {n} is not JSON ({e.msg}); fix that line") from None
    return rows


def _read_parquet(f: Path) -> list[dict]:
    import pyarrow  # lazy: only Parquet chat data needs it
    import pyarrow.parquet as pq

    try:
        return pq.read_table(f).to_pylist()
    except (pyarrow.ArrowException, OSError) as e:
        raise JaxlmError(f"chat data {f} is not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None


def load_chat_set(path: str, preference: bool) -> ChatSet:
    """The records of `path` as SFT conversations (preference=False) or preference Pairs."""
    out = ChatSet([])
    for where, record in read_records(path):
        if not isinstance(record, dict):
            raise JaxlmError(f"{where} is not a JSON object; each record is {{\"messages\": [...]}} or has prompt keys")
        is_pair = "chosen" in record or "rejected" in record
        if is_pair != preference:
            raise JaxlmError(_wrong_kind(path, where, is_pair))
        if not preference:
            out.examples.append(_conversation(where, record))
            continue
        pair = _pair(where, record)
        if pair.chosen == pair.rejected:
            out.dropped_identical += 1
        else:
            out.examples.append(pair)
    if not out.examples:
        raise JaxlmError(f"chat data {path}: every preference pair has chosen identical to rejected "
                         f"({out.dropped_identical} dropped); give pairs whose answers differ")
    return out


def _wrong_kind(path: str, where: str, is_pair: bool) -> str:
    if is_pair:
        return (f"chat data {path} is a preference file ({where} has chosen/rejected), but posttrain.objective=sft "
                f"trains on conversations; set posttrain.objective=dpo (or simpo), "
                f"or give {{\"messages\": ...}} records")
    return (f"chat data {path} is not a preference file ({where} has no chosen/rejected), but DPO and SimPO train "
            f"on pairs; give {{\"prompt\", \"chosen\", \"rejected\"}} records, or set posttrain.objective=sft")


def _conversation(where: str, record: dict) -> tuple:
    if "messages" in record:
        messages = check_turns(where, "messages", record["messages"])
    elif "prompt" in record and "completion" in record:
        messages = as_turns(where, "prompt", record["prompt"], "user") + \
            as_turns(where, "completion", record["completion"], "assistant")
    else:
        raise JaxlmError(f"{where} has neither \"messages\" nor \"prompt\" + \"completion\" (keys: "
                         f"{', '.join(map(str, record)) or 'none'}); use one of the two formats")
    if not any(m["role"] == "assistant" for m in messages):
        raise JaxlmError(f"{where} has no assistant turn, so there is nothing to learn; add the assistant's reply "
                         f"or remove the record")
    return messages


def _pair(where: str, record: dict) -> Pair:
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
    if missing:
        raise JaxlmError(f"{where} lacks {', '.join(missing)}; a preference record has prompt, chosen and rejected")
    prompt = as_turns(where, "prompt", record["prompt"], "user")
    chosen = as_turns(where, "chosen", record["chosen"], "assistant")
    rejected = as_turns(where, "rejected", record["rejected"], "assistant")
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        if not any(m["role"] == "assistant" for m in turns):
            raise JaxlmError(f"{where}: {key} has no assistant turn; "
                             "give the answer as a string or an assistant message")
    return Pair(prompt, chosen, rejected)


def as_turns(where: str, key: str, value, role: str) -> tuple:
    """A string -> one `role` turn; a message list -> checked turns."""
    if isinstance(value, str):
        return ({"role": role, "content": value},)
    return check_turns(where, key, value)


def check_turns(where: str, key: str, messages) -> tuple:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise JaxlmError(f"{where}: {key} must be a non-empty list of {{\"role\", \"content\"}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise JaxlmError(f"{where}: {key}[{i}] must be a {{\"role\", \"content\"}} object with string content")
        if m.get("role") not in ROLES:
            raise JaxlmError(f"{where}: {key}[{i}] has unknown role {m.get('role')!r}; use one of {', '.join(ROLES)}")
        out.append({k: v for k, v in m.items() if v is not None})
    return tuple(out)
