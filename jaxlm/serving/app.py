"""The OpenAI-compatible HTTP API (a FastAPI app) over one ServingEngine; `server.Server` runs it.

    POST /v1/completions, /v1/chat/completions   streaming (server-sent events, `data: [DONE]`) or not
    GET  /v1/models, /health, /metrics           the model's name; liveness; Prometheus text

The server does no scheduling of its own: each HTTP request becomes one engine request per choice
(`bridge.RequestRun`), the engine's thread batches everything in flight step by step, and its token
events come back to the event loop thread-safely. Bodies are parsed and checked by `protocol` (400
naming the field), turned into prompt ids and RequestParams by `prepare` (chat template, stop ids,
context), and answered in OpenAI's shapes by `responses`. Faults: a wrong or missing key when one is
set -> 401 (on /v1/*; /health and /metrics stay open); a full engine queue -> 429 with Retry-After, and
the server goes on answering; a client that disconnects cancels its engine requests (slot and pages
freed within one engine step); while the server drains after SIGTERM (`server`), new requests -> 503.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from jaxlm.errors import ArgumentTypeError, ArgumentValueError, JaxlmError
from jaxlm.serving import responses as out
from jaxlm.serving.bridge import RequestRun
from jaxlm.serving.metrics import CONTENT_TYPE, ServerMetrics
from jaxlm.serving.prepare import Preparer, Work
from jaxlm.serving.protocol import ApiError, ChatRequest, CompletionRequest, parse

FIELDS_IN_ENGINE_ERRORS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "prompt")


class ServerState:
    """What the routes share: the engine, the model's preparer, metrics, the key, the draining flag."""

    def __init__(self, engine, lm, model_name: str, api_key: str | None = None):
        self.engine, self.lm, self.model_name, self.api_key = engine, lm, model_name, api_key
        self.preparer = Preparer(lm, engine.max_context)
        self.metrics = ServerMetrics(engine)
        self.draining = False
        self.started = int(time.time())


def build_app(state: ServerState) -> FastAPI:
    """The FastAPI app; the caller starts and stops the engine (server.Server)."""
    app = FastAPI(title="jaxlm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state

    @app.get("/health")
    async def health():  # 503 while draining: a load balancer stops sending here
        return JSONResponse({"status": "draining" if state.draining else "ok"}, status_code=503 if state.draining
                            else 200)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        return _counted(state, request, _models(state, request))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return _counted(state, request, await _serve(state, request, chat=False))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return _counted(state, request, await _serve(state, request, chat=True))

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return error_response(ApiError(404, f"no route {request.method} {request.url.path}; the routes are "
                                            f"{', '.join(KNOWN_PATHS)}", code="not_found"))

    @app.exception_handler(405)
    async def bad_method(request: Request, exc):
        return error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                                       code="method_not_allowed"))

    return app


KNOWN_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


def _counted(state: ServerState, request: Request, response: Response) -> Response:
    state.metrics.http.labels(request.url.path, str(response.status_code)).inc()
    return response


def _models(state: ServerState, request: Request) -> Response:
    try:
        _gate(state, request)
    except ApiError as e:
        return error_response(e)
    return JSONResponse({"object": "list", "data": [{"id": state.model_name, "object": "model",
                                                     "created": state.started, "owned_by": "jaxlm",
                                                     "max_model_len": state.engine.max_context}]})


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _gate(state: ServerState, request: Request) -> None:
    """The checks before any /v1 route: the API key, then whether the server still takes requests."""
    _check_key(state, request)
    if state.draining:
        raise ApiError(503, "the server is shutting down; retry on another replica", kind="server_error",
                       code="shutting_down")


def _check_key(state: ServerState, request: Request) -> None:
    if state.api_key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:].strip() if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), state.api_key.encode()):
        what = "no API key given" if not given else "the API key is wrong"
        raise ApiError(401, f"{what}; send the server's --api-key as `Authorization: Bearer KEY`",
                       code="invalid_api_key")


async def _serve(state: ServerState, request: Request, chat: bool):
    arrival = time.perf_counter()
    try:
        _gate(state, request)
        req = parse(await request.body(), ChatRequest if chat else CompletionRequest)
        work = state.preparer.chat(req) if chat else state.preparer.completion(req)
        run = RequestRun(state.engine, state.metrics, asyncio.get_running_loop(), arrival)
        run.submit(work.prompts, work.params)
    except ApiError as e:
        return error_response(e)
    except (ArgumentTypeError, ArgumentValueError, JaxlmError) as e:  # the engine's own checks
        return error_response(ApiError(400, str(e), param=_field_named(str(e))))
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_stream(state, run, work, chat, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _whole(state, request, run, work, chat)


def _field_named(message: str) -> str | None:
    return next((f for f in FIELDS_IN_ENGINE_ERRORS if f in message), None)


async def _whole(state: ServerState, request: Request, run: RequestRun, work: Work, chat: bool):
    """Non-streaming: wait for every choice; a client that goes away meanwhile cancels them."""
    try:
        async for _ in run.events(disconnected=request.is_disconnected):
            pass
    finally:
        run.cancel()
    if run.open:  # cancelled: the client is gone, nobody reads this
        return Response(status_code=499)
    results = run.results()
    tok = state.lm.tokenizer
    choices = []
    for index, r in enumerate(results):
        if chat:
            lp = None if work.logprobs_top is None else out.chat_logprobs(tok, r.token_ids, r.logprobs,
                                                                         work.logprobs_top)
            choices.append(out.chat_choice(index, r.text, r.finish_reason, lp))
        else:
            lp = None if work.logprobs_top is None else out.completion_logprobs(tok, r.token_ids, r.logprobs,
                                                                               work.logprobs_top)
            choices.append(out.completion_choice(index, r.text, r.finish_reason, lp))
    use = out.usage_of(results, work.prompt_lengths)
    build = out.chat_completion if chat else out.completion
    return JSONResponse(build(_response_id(run, chat), state.model_name, choices, use))


def _response_id(run: RequestRun, chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{run.id}"


async def _stream(state: ServerState, run: RequestRun, work: Work, chat: bool, include_usage: bool):
    """Server-sent events; the generator is cancelled when the client disconnects (finally: cancel)."""
    rid, model, tok = _response_id(run, chat), state.model_name, state.lm.tokenizer
    offsets = [0] * len(work.prompts)
    try:
        if chat:
            for index in range(len(work.prompts)):
                yield out.sse(out.chat_chunk(rid, model, index, {"role": "assistant", "content": ""}, None))
        async for index, ev in run.events():
            ids = [] if ev.token_id is None else [ev.token_id]
            lps = None if work.logprobs_top is None or ev.logprob is None else [ev.logprob]
            if not ev.text and ev.finish_reason is None:
                if lps is None:
                    continue  # held back (a possible stop string, an incomplete character): nothing to send
            if chat:
                lp = None if lps is None else out.chat_logprobs(tok, ids, lps, work.logprobs_top)
                delta = {"content": ev.text} if ev.text else {}
                yield out.sse(out.chat_chunk(rid, model, index, delta, ev.finish_reason, lp))
            else:
                lp = None if lps is None else out.completion_logprobs(tok, ids, lps, work.logprobs_top,
                                                                      offsets[index])
                offsets[index] += len(ev.text)
                yield out.sse(out.completion_chunk(rid, model, index, ev.text, ev.finish_reason, lp))
        if include_usage:
            kind = "chat.completion.chunk" if chat else "text_completion"
            yield out.sse(out.usage_chunk(rid, model, kind, out.usage_of(run.results(), work.prompt_lengths)))
        yield out.DONE
    finally:
        run.cancel()

