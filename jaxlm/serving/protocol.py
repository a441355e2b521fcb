"""The OpenAI request bodies the server accepts, checked before anything reaches the engine.

A body is read as bytes and parsed here, not by FastAPI's own validation, so that every fault is
OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}` with status 400, and the
message names the field: malformed JSON, an unknown field (a typo must not be ignored silently), a
wrong type (strict: "8" is not an integer), a value out of range. The pydantic models are strict and
forbid extra keys; OpenAI fields this server does not implement are accepted only at their no-op
value (`echo: false`, `presence_penalty: 0`, ...) and refused otherwise, naming the field.

`top_k` is an extension (as in vLLM); `user` is accepted and ignored. `n` > 1 runs n requests with
seeds `seed + i` (streams interleave their chunks by `index`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SEED_MAX = 2**32 - 1
MAX_N = 16  # choices per request: each is its own engine request
MAX_STOP = 16


class ApiError(Exception):
    """An error answered with OpenAI's error body: status, message naming the problem, the field."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)  # extension; -1 or 0 = off
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    user: str | None = None  # ignored
    # OpenAI fields accepted only at their no-op value (NOOP_DEFAULTS)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)  # > 0: the chosen token's log-probability only
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ChatRequest(_Common):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)  # only the chosen token is listed


# Fields taken for OpenAI compatibility that must keep their no-op value (anything else: 400 naming them).
NOOP_DEFAULTS: dict[str, tuple] = {"presence_penalty": (0.0,), "frequency_penalty": (0.0,), "logit_bias": (None, {}),
                                   "echo": (False,), "best_of": (None, 1), "suffix": (None, "")}


def parse(raw: bytes, model: type[_Common]) -> _Common:
    """The request body as `model`, or an ApiError(400) naming the field at fault."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({str(e).splitlines()[0][:120]}); send a JSON "
                            f"object with Content-Type: application/json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        request = model.model_validate(data)
    except ValidationError as e:
        raise _field_error(e.errors()[0], model) from None
    for name, allowed in NOOP_DEFAULTS.items():
        if name in model.model_fields and getattr(request, name) not in allowed:
            raise ApiError(400, f"{name} is not supported by this server; leave it out or set it to "
                                f"{allowed[0]!r}", param=name, code="unsupported_parameter")
    _check_stop(request.stop)
    return request


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _field_error(error: dict, model: type[BaseModel]) -> ApiError:
    """pydantic's first error as one line naming the field (messages[0].role style)."""
    loc = [part for part in error.get("loc", ()) if not _is_union_tag(part)]
    param = _dotted(loc) or None
    if error.get("type") == "extra_forbidden":
        fields = ", ".join(sorted(f for f in model.model_fields if f not in NOOP_DEFAULTS))
        where = "" if len(loc) == 1 else " here"
        return ApiError(400, f"unknown field {param!r}{where}; the fields are: {fields}", param=param,
                        code="unknown_field")
    if error.get("type") == "missing":
        return ApiError(400, f"{param} is required", param=param, code="missing_field")
    got = error.get("input")
    shown = json.dumps(got)[:60] if _jsonable(got) else type(got).__name__
    return ApiError(400, f"{param}: {error.get('msg', 'invalid value')}, got {shown}", param=param,
                    code="invalid_value")


def _is_union_tag(part) -> bool:
    """pydantic names the union member it tried (`str`, `list[int]`, ...) inside loc; not a field."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "function-after"))


def _dotted(loc: list) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return not (isinstance(value, float) and not math.isfinite(value))
    except (TypeError, ValueError):
        return False


def _check_stop(stop) -> None:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"stop holds {len(stops)} strings; give at most {MAX_STOP}", param="stop")
    if any(s == "" for s in stops):
        raise ApiError(400, "stop holds an empty string; every stop string needs at least one character", param="stop")


def stop_strings(stop) -> tuple[str, ...]:
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


def prompt_list(prompt) -> list[str | list[int]]:
    """A completions `prompt` as a list of prompts: text, or token ids (OpenAI's four shapes)."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if not prompt:
        raise ApiError(400, "prompt is empty; give a string, a list of strings or a list of token ids", param="prompt")
    return list(prompt)


FinishReason = Literal["stop", "length", "cancelled", "error"]
