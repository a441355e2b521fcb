"""`jaxlm serve --ckpt DIR`: the OpenAI-compatible HTTP server (jaxlm/serving/, the `serve` extra).

The model loads first, so a bad checkpoint is one line and exit 2 before any port is bound; then the
socket is bound (a port in use: one line, exit 2), the engine's thread starts and uvicorn serves.
SIGTERM or Ctrl-C drains (new requests 503, running ones get --drain-s seconds, the rest are
cancelled) and the command exits 0. Design and error table: docs/serving.md.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from jaxlm.cli.common import positive_int
from jaxlm.errors import JaxlmError

SERVE_PACKAGES = ("fastapi", "uvicorn", "prometheus_client")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (needs .[serve])")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="model dir, run dir or RUN_DIR/checkpoints/<step>")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this host only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=os.environ.get("JAXLM_API_KEY"), metavar="KEY",
                   help="require `Authorization: Bearer KEY` on /v1/* (default: $JAXLM_API_KEY, else none)")
    p.add_argument("--model-name", default=None, help="the model id /v1/models shows (default: the folder's name)")
    add_engine_args(p)
    p.add_argument("--warmup", action="store_true",
                   help="compile every step program before serving, so no request waits for a compile (minutes on a "
                        "CPU; docs/serving.md)")
    p.add_argument("--drain-s", type=float, default=30.0,
                   help="on SIGTERM, seconds running requests get to finish before they are cancelled (default 30)")
    p.set_defaults(func=run)


def add_engine_args(p) -> None:
    """The ServingEngine's knobs (shared with `jaxlm generate --input` and benchmarks/bench_serve.py)."""
    p.add_argument("--max-slots", type=positive_int, default=8, help="requests decoded together (default 8)")
    p.add_argument("--max-context", type=positive_int, default=None,
                   help="tokens per request, prompt + output (default: the model's context)")
    p.add_argument("--max-queue", type=positive_int, default=256,
                   help="requests waiting for a slot before new ones get 429 (default 256)")
    p.add_argument("--page-size", type=positive_int, default=16, help="tokens per KV-cache page (default 16)")
    p.add_argument("--num-pages", type=positive_int, default=None,
                   help="KV-cache pages in the pool (default: enough for every slot at the full context)")
    p.add_argument("--prefill-chunk", type=positive_int, default=128,
                   help="prompt tokens prefilled per engine step (default 128)")
    p.add_argument("--no-prefix-cache", action="store_true", help="do not reuse the KV pages of shared prompt prefixes")
    p.add_argument("--cache-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "int8"],
                   help="KV cache storage (auto = the model's compute dtype)")
    p.add_argument("--decode-steps", type=positive_int, default=8,
                   help="decode steps per compiled call when only decoding is left (default 8; 1 = one per call)")


def engine_kwargs(args) -> dict:
    return dict(max_slots=args.max_slots, max_context=args.max_context, page_size=args.page_size,
                num_pages=args.num_pages, prefill_chunk=args.prefill_chunk, prefix_cache=not args.no_prefix_cache,
                max_queue=args.max_queue, cache_dtype=args.cache_dtype, decode_steps=args.decode_steps)


def require_serve_extra() -> None:
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise JaxlmError(f"jaxlm serve needs {', '.join(missing)}: pip install -e \".[serve]\"")


def run(args) -> int:
    require_serve_extra()
    if not 0 <= args.port <= 65535:
        raise JaxlmError(f"--port must be in [0, 65535], got {args.port}")
    if args.drain_s < 0:
        raise JaxlmError(f"--drain-s must be >= 0, got {args.drain_s}")
    # lazy: keeps `jaxlm --help` fast (the engine loads JAX, the server FastAPI)
    from jaxlm.inference import load
    from jaxlm.serving.engine import ServingEngine
    from jaxlm.serving.server import Server, model_name_of

    lm = load(args.ckpt, cache_dtype=args.cache_dtype)
    engine = ServingEngine(lm, **engine_kwargs(args))
    server = Server(engine, lm, model_name=args.model_name or model_name_of(args.ckpt), host=args.host,
                    port=args.port, api_key=args.api_key, drain_s=args.drain_s, warmup=args.warmup)
    stats = engine.stats()
    print(f"jaxlm serve: {server.state.model_name} on {server.url} ({engine.max_slots} slots, context "
          f"{engine.max_context}, {stats.pages_total} KV pages of {args.page_size} tokens"
          f"{', API key required' if args.api_key else ''}); Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)
    server.run()
    print("jaxlm serve: stopped", file=sys.stderr, flush=True)
    return 0
