"""Serving throughput and latency: the continuous-batching ServingEngine against today's static-batch
`lm.generate_ids`, on the same requests arriving at the same times, side by side in one run.

    python benchmarks/bench_serve.py                 # default-run model + OpenELM-270M shapes -> results/serve.md
    python benchmarks/bench_serve.py --quick         # shorter requests, fewer of them (a few minutes)
    python benchmarks/bench_serve.py --models default --concurrency 8

Workload (one per model, seeded): prompts of 16-512 tokens (windows of the bundled plays), outputs of 16-256
tokens, arrivals a Poisson process of --rate requests/s; a request's prompt + output is capped at the model's
context (the default run's model has 512: its prompts are 16-256). Every request produces exactly its
output length on both sides (no stop token: the weights are random, and an early eos would make the sides
do different work). At concurrency C a client keeps at most C requests in flight: a request is sent at
its arrival or, if C are in flight, when one finishes (as vLLM's benchmark_serving --max-concurrency).

- serving: `ServingEngine(lm, max_slots=C, decode_steps=--decode-steps)` in its background thread, its
  step programs compiled first by `engine.warmup()` (its time is printed); TTFT = first token event - send,
  inter-token latency (ITL) = the gaps between a request's token events. With multi-step decode a block's
  tokens arrive together (ITL 0 inside a block, one block's time between blocks), so the table also gives
  TPOT, a request's (last token - first token) / (tokens - 1), median over requests.
- static: a user of `lm.generate_ids` running fixed batches of C requests in arrival order (the last one
  smaller): a batch starts when its requests have arrived and the previous batch has ended, and runs for
  its longest output. A request's tokens come with its batch, so TTFT = batch start + the batch's time to
  first token - send, and ITL = the batch's decode time per step; tokens a row computes past its own
  length are not counted. Fixed batches repeat their shapes from pass to pass, so no compile falls in a
  timed round (batching whatever has arrived would meet a new batch size, and a compile, far more often).

Output tok/s = the requests' output tokens / (last completion - first send). Both sides run the workload
untimed first (the serving side until a pass compiles nothing, at most --warmup passes: its batches depend
on timing, so a later pass can meet shapes an earlier one did not); then --rounds timed rounds,
interleaved. The figures are medians over rounds, and the XLA compiles that still fell in timed rounds are
counted in the table. Models are random-init (speed does not depend on the values): the default run's
architecture (configs/default.yaml -> tiny_layerwise) and OpenELM-270M. Results: results/serve.md +
serve.jsonl, with the load average before and after; on a loaded machine the file is still written but
labelled so (`--quick` runs too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quiet  # noqa: E402  (benchmarks/quiet.py)

from jaxlm.cli.common import start_backend  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"default": "default", "openelm_270m": "openelm_270m"}


@dataclasses.dataclass(frozen=True)
class Req:
    prompt: tuple[int, ...]
    output: int
    arrival: float  # seconds after the start


@dataclasses.dataclass
class Timing:
    send: float
    token_times: list[float]


class CompileWatch:
    """Seconds and count of XLA backend compiles while active (a timed round should have none)."""

    def __init__(self):
        import jax.monitoring

        self.count, self.seconds, self.active = 0, 0.0, False
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_) -> None:
        if self.active and event == "/jax/core/compile/backend_compile_duration":
            self.count += 1
            self.seconds += duration


def workload(tokens: np.ndarray, n: int, rate: float, ctx: int, quick: bool, seed: int) -> list[Req]:
    rng = random.Random(seed)
    p_hi, o_hi = (128, 64) if quick else (512, 256)
    p_hi = min(p_hi, ctx // 2)
    t, out = 0.0, []
    for _ in range(n):
        plen = rng.randint(16, p_hi)
        olen = min(rng.randint(16, o_hi), ctx - plen)
        start = rng.randrange(0, len(tokens) - plen)
        out.append(Req(tuple(int(x) for x in tokens[start:start + plen]), olen, t))
        t += rng.expovariate(rate)
    return out


def run_serving(engine_factory, reqs: list[Req], concurrency: int) -> list[Timing]:
    from jaxlm.serving import RequestParams

    engine = engine_factory(concurrency)
    engine.start()
    slots = threading.Semaphore(concurrency)
    timings = [Timing(0.0, []) for _ in reqs]
    done = threading.Event()
    left = [len(reqs)]
    lock = threading.Lock()

    def callback(i):
        def on_event(ev):
            if ev.token_id is not None:
                timings[i].token_times.append(ev.time)
            if ev.finish_reason is not None:
                slots.release()
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()
        return on_event

    t0 = time.perf_counter()
    for i, r in enumerate(reqs):
        time.sleep(max(0.0, t0 + r.arrival - time.perf_counter()))
        slots.acquire()
        timings[i].send = time.perf_counter()
        engine.submit(list(r.prompt), RequestParams(max_tokens=r.output, ignore_eos=True), on_event=callback(i))
    done.wait()
    engine.shutdown(timeout_s=0)
    return timings


def run_static(lm, reqs: list[Req], concurrency: int) -> list[Timing]:
    """A user's loop over lm.generate_ids: fixed batches of C requests in arrival order (the last one smaller);
    a batch starts when its requests have arrived and the previous batch has ended (C in flight at most)."""
    timings = [Timing(0.0, []) for _ in reqs]
    t0 = time.perf_counter()
    previous_end = t0
    for first_index in range(0, len(reqs), concurrency):
        batch = list(range(first_index, min(first_index + concurrency, len(reqs))))
        for i in batch:
            timings[i].send = max(t0 + reqs[i].arrival, previous_end)
        time.sleep(max(0.0, max(timings[i].send for i in batch) - time.perf_counter()))
        start = time.perf_counter()
        steps = max(reqs[i].output for i in batch)
        out = lm.generate_ids([list(reqs[i].prompt) for i in batch], steps, stop_tokens=[-1])
        previous_end = time.perf_counter()
        first = start + out.time_to_first_token_s
        per_step = out.decode_s / max(1, steps - 1)
        for i in batch:
            timings[i].token_times = [first + k * per_step for k in range(reqs[i].output)]
    return timings


def summarize(reqs: list[Req], timings: list[Timing]) -> dict:
    ttft = [t.token_times[0] - t.send for t in timings]
    itl = [b - a for t in timings for a, b in zip(t.token_times, t.token_times[1:])]
    span = max(t.token_times[-1] for t in timings) - min(t.send for t in timings)
    tokens = sum(r.output for r in reqs)
    pct = {f"{name}_p{q}": float(np.percentile(xs, q)) for name, xs in (("ttft", ttft), ("itl", itl)) for q in (50, 99)}
    tpot = [(t.token_times[-1] - t.token_times[0]) / (len(t.token_times) - 1)
            for t in timings if len(t.token_times) > 1]
    return {"tok_s": tokens / span, **pct, "tpot_p50": float(np.median(tpot)), "tokens": tokens, "seconds": span}


def build_lm(name: str):
    from bench_decode import random_jaxlm_model

    from jaxlm.config import load_run_config
    from jaxlm.inference import LanguageModel, api
    from jaxlm.tokenizer import load_tokenizer

    cfg = load_run_config(MODELS[name]).model
    tok = load_tokenizer("bundled:tokenizer")
    if cfg.vocab_size != tok.vocab_size:
        # OpenELM-270M keeps its 32k-row embedding and head (their cost is part of its decode step); the bundled
        # 2048-piece tokenizer only supplies prompt ids, and sampling stays below its vocabulary (vocab_limit)
        api.check_vocab = lambda *a, **k: None
    return LanguageModel(random_jaxlm_model(cfg), tok)


def corpus_tokens(lm) -> np.ndarray:
    from jaxlm.assets import resolve_path

    text = "".join(p.read_text() for p in sorted(resolve_path("bundled:corpus/train").glob("*.txt"))[:2])
    return np.asarray(lm.tokenizer.encode(text), np.int32)


def bench_model(name: str, args, watch: CompileWatch) -> list[dict]:
    from jaxlm.serving import ServingEngine

    lm = build_lm(name)
    tokens = corpus_tokens(lm)
    rows = []
    for c in args.concurrency:
        n = args.requests or (max(4, c) if args.quick else max(8, 2 * c))
        reqs = workload(tokens, n, args.rate, lm.cfg.max_context, args.quick, seed=c)
        ctx = max(len(r.prompt) + r.output for r in reqs)

        def factory(slots):
            return ServingEngine(lm, max_slots=slots, max_context=min(lm.cfg.max_context, -(-ctx // 16) * 16),
                                 decode_steps=args.decode_steps)

        sides = {"serving": lambda: run_serving(factory, reqs, c), "static": lambda: run_static(lm, reqs, c)}
        print(f"{name} concurrency {c}: {n} requests, prompts {min(len(r.prompt) for r in reqs)}-"
              f"{max(len(r.prompt) for r in reqs)}, outputs {min(r.output for r in reqs)}-"
              f"{max(r.output for r in reqs)} tokens; warm-up (compiles)", flush=True)
        if not args.no_warmup:
            t0 = time.perf_counter()
            programs = factory(c).warmup(sampled=False)  # the requests are greedy
            print(f"  serving engine.warmup(): {programs} programs in {time.perf_counter() - t0:.1f} s", flush=True)
        for side, fn in sides.items():  # serving batches depend on timing: passes until one compiles nothing
            for k in range(args.warmup if side == "serving" else 1):
                watch.count, watch.seconds, watch.active = 0, 0.0, True
                fn()
                watch.active = False
                print(f"  warm-up {side} pass {k + 1}: {watch.count} compiles ({watch.seconds:.1f} s)", flush=True)
                if watch.count == 0:
                    break
        per_side = {s: [] for s in sides}
        for k in range(args.rounds):
            for s, fn in sides.items():
                watch.count, watch.seconds, watch.active = 0, 0.0, True
                timings = fn()
                watch.active = False
                per_side[s].append({**summarize(reqs, timings), "compiles": watch.count,
                                    "compile_s": watch.seconds})
                print(f"  round {k + 1} {s}: " + ", ".join(f"{key} {v:.4g}" for key, v in per_side[s][-1].items()),
                      flush=True)
        for s, results in per_side.items():
            med = {key: quiet.median([r[key] for r in results]) for key in results[0]}
            rows.append({"model": name, "side": s, "concurrency": c, "requests": n, "rounds": args.rounds, **med})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | concurrency | side | output tok/s | TTFT p50 (s) | TTFT p99 (s) | ITL p50 (ms) | ITL p99 (ms) |"
             " TPOT p50 (ms) | serving / static tok/s | compiles in timed rounds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by = {(r["model"], r["concurrency"], r["side"]): r for r in rows}
    for r in rows:
        static = by.get((r["model"], r["concurrency"], "static"))
        ratio = f"**{r['tok_s'] / static['tok_s']:.2f}x**" if r["side"] == "serving" and static else ""
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['side']} | {r['tok_s']:.1f} | {r['ttft_p50']:.2f} | "
                     f"{r['ttft_p99']:.2f} | {1e3 * r['itl_p50']:.1f} | {1e3 * r['itl_p99']:.1f} | "
                     f"{1e3 * r['tpot_p50']:.1f} | {ratio} | "
                     f"{r['compiles']:g} ({r['compile_s']:.1f} s) |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rate", type=float, default=50.0,
                    help="Poisson arrival rate, requests/s (default 50: above what either side serves, so the "
                         "concurrency limit, not the arrivals, sets the load)")
    ap.add_argument("--requests", type=int, default=None, help="requests per concurrency (default 2 x C, >= 8)")
    ap.add_argument("--quick", action="store_true", help="prompts 16-128, outputs 16-64, C requests (>= 4)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3; 1 with --quick)")
    ap.add_argument("--warmup", type=int, default=6,
                    help="untimed passes first, until one compiles nothing (at most this many; default 6)")
    ap.add_argument("--decode-steps", type=int, default=8,
                    help="the serving engine's decode_steps (multi-step decode; 1 = a host round trip per token)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip engine.warmup() (the warm-up passes then compile what they meet)")
    ap.add_argument("--out", default=None, help="results name under benchmarks/results (default serve)")
    args = ap.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    start_backend()  # malloc tuned as the CLI tunes it; JAX's start-up noise filtered
    watch = quiet.LoadWatch()
    compiles = CompileWatch()
    rows = [row for name in args.models for row in bench_model(name, args, compiles)]
    watch.stop()
    date = time.strftime("%Y-%m-%d")
    label = "" if watch.quiet else (f"\n**Taken under load ({watch.line()}): other jobs shared the 2 cores; these "
                                    f"figures are not for quoting.**\n")
    mode = "--quick (prompts 16-128, outputs 16-64 tokens)" if args.quick else "full (prompts 16-512, outputs 16-256)"
    text = (f"# Serving benchmark: continuous batching vs static batches\n\n`{quiet.command()}`, {date}. "
            f"{quiet.hardware()}; {watch.line()}.{label}\nMode: {mode}; Poisson arrivals at {args.rate:g} requests/s; "
            f"{args.rounds} timed round(s) after an untimed warm-up; serving decode_steps={args.decode_steps}"
            f"{' (no engine.warmup())' if args.no_warmup else ', engine.warmup() first'}; "
            f"random-init models: `default` is the default "
            f"run's architecture (tiny_layerwise, context 512: prompts capped at 256), `openelm_270m` OpenELM-270M. "
            f"How it is measured: the docstring of benchmarks/bench_serve.py.\n\n{table(rows)}\n")
    out = args.out or "serve"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out}.md").write_text(text)
    with open(RESULTS / f"{out}.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps({"date": date, "load_before": watch.before, "load_after": watch.after,
                                "quick": args.quick, "rate": args.rate, **row}) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
