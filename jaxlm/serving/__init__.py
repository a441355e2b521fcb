"""Serving: a continuous-batching engine over a paged KV cache (`ServingEngine`, jaxlm/serving/engine.py)."""

from jaxlm.serving.engine import (
    Completion,
    EngineClosed,
    EngineStats,
    QueueFull,
    RequestHandle,
    RequestParams,
    ServingEngine,
    TokenEvent,
)

__all__ = ["Completion", "EngineClosed", "EngineStats", "QueueFull", "RequestHandle", "RequestParams",
           "ServingEngine", "TokenEvent"]
