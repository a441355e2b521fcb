"""OpenAI response objects: completions and chat completions, whole and as stream chunks.

Shapes as in OpenAI's API reference (`text_completion`, `chat.completion`, `chat.completion.chunk`),
so the official `openai` client parses them. Log-probabilities are those of the chosen tokens (the
engine reports no alternatives): completions' `top_logprobs` and chat's `top_logprobs` list only the
chosen token. A stream is server-sent events: `data: {chunk}` lines, then `data: [DONE]`.
"""

from __future__ import annotations

import json
import time


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def usage_of(results: list, prompt_lengths: list[int]) -> dict:
    """Prompt tokens counted once per distinct prompt (n choices share one), completion tokens summed."""
    return usage(sum(prompt_lengths), sum(r.completion_tokens for r in results))


def _head(request_id: str, kind: str, model: str) -> dict:
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model}


def completion_logprobs(tokenizer, token_ids: list[int], logprobs: list[float] | None, top: int,
                        offset: int = 0) -> dict | None:
    """Completions' legacy logprobs object for the chosen tokens."""
    if logprobs is None:
        return None
    pieces = [tokenizer.decode([t]) for t in token_ids]
    offsets, at = [], offset
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    return {"tokens": pieces, "token_logprobs": list(logprobs),
            "top_logprobs": [{p: lp} for p, lp in zip(pieces, logprobs)] if top > 0 else None,
            "text_offset": offsets}


def chat_logprobs(tokenizer, token_ids: list[int], logprobs: list[float] | None, top: int) -> dict | None:
    if logprobs is None:
        return None
    content = []
    for t, lp in zip(token_ids, logprobs):
        piece = tokenizer.decode([t])
        entry = {"token": piece, "logprob": lp, "bytes": list(piece.encode())}
        entry["top_logprobs"] = [dict(entry)] if top > 0 else []
        content.append(entry)
    return {"content": content, "refusal": None}


def completion(request_id: str, model: str, choices: list[dict], use: dict) -> dict:
    return {**_head(request_id, "text_completion", model), "choices": choices, "usage": use,
            "system_fingerprint": None}


def completion_choice(index: int, text: str, finish_reason: str, logprobs: dict | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_completion(request_id: str, model: str, choices: list[dict], use: dict) -> dict:
    return {**_head(request_id, "chat.completion", model), "choices": choices, "usage": use,
            "system_fingerprint": None}


def chat_choice(index: int, text: str, finish_reason: str, logprobs: dict | None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": logprobs, "finish_reason": finish_reason}


def completion_chunk(request_id: str, model: str, index: int, text: str, finish_reason: str | None,
                     logprobs: dict | None = None) -> dict:
    return {**_head(request_id, "text_completion", model),
            "choices": [completion_choice(index, text, finish_reason, logprobs)]}


def chat_chunk(request_id: str, model: str, index: int, delta: dict, finish_reason: str | None,
               logprobs: dict | None = None) -> dict:
    return {**_head(request_id, "chat.completion.chunk", model),
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def usage_chunk(request_id: str, model: str, kind: str, use: dict) -> dict:
    return {**_head(request_id, kind, model), "choices": [], "usage": use}
