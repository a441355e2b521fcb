"""The server's Prometheus metrics (`GET /metrics`, text format), in a registry of its own.

Two kinds: the engine's state, read from `engine.stats()` at each scrape (requests running and
waiting, pages in use of the total, prefix-cache hits and queries, tokens generated, requests
finished), and what the server itself measures on the engine's token events (time to first token
from the HTTP request's arrival, inter-token latency, request latency, HTTP responses by endpoint and
status). `jaxlm_generation_tokens_per_second` is the rate over the last WINDOW_S seconds, for a
dashboard without PromQL; `rate(jaxlm_generation_tokens_total[1m])` is the usual way.

A registry per server (not prometheus_client's global one) keeps two servers in one process (tests)
from colliding.
"""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WINDOW_S = 10.0
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
disable_created_metrics()  # no *_created series beside each histogram and counter

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class EngineCollector:
    """The engine's stats() snapshot as gauges and counters, read when Prometheus scrapes."""

    def __init__(self, engine, token_rate):
        self.engine = engine
        self.token_rate = token_rate

    def collect(self):
        s = self.engine.stats()
        for name, doc, value in (("requests_running", "requests holding a decode slot", s.running),
                                 ("requests_waiting", "requests queued for a slot", s.waiting),
                                 ("kv_pages_in_use", "KV-cache pages held by running requests",
                                  s.pages_in_use),
                                 ("kv_pages_total", "KV-cache pages in the pool", s.pages_total),
                                 ("kv_pages_cached", "pages kept by the prefix cache (held or idle)",
                                  getattr(s, "pages_cached", 0)),
                                 ("generation_tokens_per_second", f"output tokens/s over the last {WINDOW_S:g} s",
                                  self.token_rate())):
            yield GaugeMetricFamily(f"jaxlm_{name}", doc, value=value)
        for name, doc, value in (("prefix_cache_hits", "prompt pages reused from the prefix cache",
                                  s.prefix_cache_hits),
                                 ("prefix_cache_queries", "full prompt pages looked up in the prefix cache",
                                  s.prefix_cache_queries),
                                 ("generation_tokens", "tokens generated", s.tokens_generated_total),
                                 ("requests_finished", "engine requests finished (any reason)",
                                  s.requests_finished_total),
                                 ("preemptions", "running requests sent back to the queue when pages ran out",
                                  getattr(s, "preemptions", 0))):
            yield CounterMetricFamily(f"jaxlm_{name}", doc, value=value)


class ServerMetrics:
    """Histograms and counters the server updates, plus the engine collector; `text()` is the scrape."""

    def __init__(self, engine):
        self.registry = CollectorRegistry(auto_describe=False)
        self._token_times: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self.registry.register(EngineCollector(engine, self.tokens_per_second))
        self.ttft = Histogram("jaxlm_time_to_first_token_seconds", "request arrival to its first output token",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("jaxlm_inter_token_latency_seconds", "time between a request's consecutive tokens",
                             buckets=ITL_BUCKETS, registry=self.registry)
        self.latency = Histogram("jaxlm_request_latency_seconds", "request arrival to its last token",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.http = Counter("jaxlm_http_responses", "HTTP responses by endpoint and status",
                            ["endpoint", "status"], registry=self.registry)

    def token(self, when: float, previous: float | None, arrival: float) -> None:
        """One output token produced at `when` (perf_counter), the request's previous token at `previous`."""
        if previous is None:
            self.ttft.observe(max(0.0, when - arrival))
        else:
            self.itl.observe(max(0.0, when - previous))
        with self._lock:
            self._token_times.append(time.perf_counter())

    def tokens_per_second(self) -> float:
        now = time.perf_counter()
        with self._lock:
            while self._token_times and self._token_times[0] < now - WINDOW_S:
                self._token_times.popleft()
            return len(self._token_times) / WINDOW_S

    def text(self) -> bytes:
        return generate_latest(self.registry)
