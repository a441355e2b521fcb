"""Batch generation for synthetic data: a JSONL file of prompts -> a JSONL file of completions, through
the ServingEngine (`jaxlm generate --input prompts.jsonl --output out.jsonl [--chat] [--n K]`).

Input lines are `{"id": ..., "prompt": "text"}` or `{"id": ..., "messages": [...]}` (other keys are
ignored; blank lines skipped). Messages go through the model's chat template and stop at its end of
turn, as `lm.chat` does; with `--chat` a prompt is one user turn (after `--system`). Every line is read,
checked and tokenized before anything is generated, so a bad line is one error naming its line
number and the output is not touched.

Output lines are `{"id", "text", "tokens" (the generated ids), "finish_reason"}`, plus `"index"` when
n > 1, written as each request finishes (completion order), one whole line per `write` call on an
O_APPEND descriptor. Resuming: a rerun reads the output, drops a trailing partial line (a run killed
mid-write), and skips the (id, index) pairs already there. Sampling seeds come from (--seed, id,
index), not from the order requests finish, so a resumed run samples what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import time
import zlib
from pathlib import Path

from jaxlm.assets import resolve_path
from jaxlm.errors import JaxlmError
from jaxlm.inference import chat as chat_lib


@dataclasses.dataclass(frozen=True)
class BatchItem:
    key: str  # the id as JSON text: 1 and "1" are different ids
    id: object
    index: int
    prompt_ids: tuple[int, ...]
    chat: bool
    line: int


def read_requests(path: str | Path, lm, *, chat: bool, system: str | None, n: int, max_new_tokens: int,
                  max_context: int) -> list[BatchItem]:
    """Every (line, choice index) of the input as a BatchItem, or a JaxlmError naming the bad line."""
    items, seen = [], {}
    try:
        lines = resolve_path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise JaxlmError(f"--input {path} does not exist; give a JSONL file of {{\"id\", \"prompt\"}} lines") from None
    except IsADirectoryError:
        raise JaxlmError(f"--input {path} is a directory; give a JSONL file") from None
    except UnicodeDecodeError:
        raise JaxlmError(f"--input {path} is not UTF-8 text") from None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            item_id, ids, is_chat = _parse_line(text, lm, chat, system, max_new_tokens, max_context)
        except JaxlmError as e:
            raise JaxlmError(f"{path} line {number}: {e}") from None
        key = json.dumps(item_id)
        if key in seen:
            raise JaxlmError(f"{path} line {number}: id {key} is also on line {seen[key]}; ids must be unique "
                             f"(resuming skips ids already in the output)")
        seen[key] = number
        items += [BatchItem(key, item_id, i, tuple(ids), is_chat, number) for i in range(n)]
    if not items:
        raise JaxlmError(f"--input {path} holds no requests; give one JSON object per line")
    return items


def _parse_line(text: str, lm, chat: bool, system: str | None, max_new_tokens: int, max_context: int):
    try:
        row = json.loads(text)
    except ValueError as e:
        raise JaxlmError(f"not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise JaxlmError(f"expected a JSON object with \"id\" and \"prompt\" or \"messages\", got "
                         f"{type(row).__name__}")
    item_id = row.get("id")
    if item_id is None or isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise JaxlmError(f"\"id\" must be a string or an integer, got {json.dumps(item_id)[:40]}")
    if ("prompt" in row) == ("messages" in row):
        raise JaxlmError("give exactly one of \"prompt\" (text) or \"messages\" (a chat), not both or neither")
    if "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise JaxlmError(f"\"prompt\" must be non-empty text, got {json.dumps(prompt)[:40]}")
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": prompt}] if chat else None
    else:
        messages = row["messages"]
    ids = chat_lib.prompt_ids(lm.tokenizer, messages) if messages is not None else lm.tokenizer.encode_input(prompt)
    if len(ids) + max_new_tokens > max_context:
        raise JaxlmError(f"the prompt is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} that is over "
                         f"the context of {max_context}; shorten it or lower --max-new-tokens")
    return item_id, ids, messages is not None


class OutputLog:
    """The output JSONL: which (id, index) pairs are done, and appending whole lines."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: set[tuple[str, int]] = set()
        if self.path.is_dir():
            raise JaxlmError(f"--output {path} is a directory; give a JSONL file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._read_and_repair()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _read_and_repair(self) -> None:
        data = self.path.read_bytes()
        whole = data[:data.rfind(b"\n") + 1]
        if len(whole) < len(data):  # a run killed mid-line: drop the partial line
            os.truncate(self.path, len(whole))
        for number, line in enumerate(whole.decode("utf-8", errors="replace").splitlines(), 1):
            try:
                row = json.loads(line)
                self.done.add((json.dumps(row["id"]), int(row.get("index", 0))))
            except (ValueError, KeyError, TypeError):
                raise JaxlmError(f"--output {self.path} line {number} is not a line this command wrote; give a "
                                 f"new output path (or the output of an earlier run to resume it)") from None

    def write(self, row: dict) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        os.write(self.fd, data)  # one write of the whole line: a kill leaves no half line (and a rerun repairs)

    def close(self) -> None:
        os.close(self.fd)


def seed_for(base_seed: int, item: BatchItem) -> int:
    """A sampling seed that depends on the request, not on when it ran."""
    return (zlib.crc32(f"{item.key}:{item.index}".encode()) ^ base_seed) & 0xFFFFFFFF


def run(engine, items: list[BatchItem], log: OutputLog, params_of, n: int, progress=None) -> dict:
    """Generate every item not in log.done and append its line as it finishes; returns counts, tokens
    and seconds. At most a few batches' worth of requests are queued in the engine at a time."""
    todo = [it for it in items if (it.key, it.index) not in log.done]
    finished: queue.Queue = queue.Queue()  # items whose final event came, from the engine's thread
    pending, handles = list(reversed(todo)), {}
    tokens, failed, t0 = 0, 0, time.perf_counter()
    limit = max(1, min(engine.max_slots * 4, getattr(engine, "max_queue", 256)))
    engine.start()
    try:
        while pending or handles:
            while pending and len(handles) < limit:
                item = pending.pop()
                handles[item] = engine.submit(list(item.prompt_ids), params_of(item),
                                              on_event=_on_final(item, finished))
            item = finished.get()
            result = handles.pop(item).result(timeout=60)
            if result.finish_reason in ("error", "cancelled"):  # not written: a rerun retries it
                failed += 1
                continue
            log.write(_row(item, result, n))
            tokens += result.completion_tokens
            if progress is not None:
                progress.set_postfix_str(f"{tokens / max(time.perf_counter() - t0, 1e-9):.1f} tok/s", refresh=False)
                progress.update(1)
    finally:
        for handle in handles.values():
            handle.cancel()
        engine.shutdown(timeout_s=0)
    return {"written": len(todo) - failed, "failed": failed, "skipped": len(items) - len(todo), "tokens": tokens,
            "seconds": time.perf_counter() - t0}


def _on_final(item: BatchItem, finished: queue.Queue):
    def on_event(event) -> None:
        if event.finish_reason is not None:
            finished.put(item)

    return on_event


def _row(item: BatchItem, result, n: int) -> dict:
    row = {"id": item.id, "text": result.text, "tokens": list(result.token_ids), "finish_reason": result.finish_reason}
    if n > 1:
        row["index"] = item.index
    return row
