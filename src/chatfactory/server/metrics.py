"""Prometheus metrics, one registry per app (so several apps in one process, as in tests, never
collide in the global registry)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "chatfactory_http_requests", "HTTP requests by route and status", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "chatfactory_http_request_seconds", "Time to the response head", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.inflight = Gauge("chatfactory_generations_in_flight", "Generation requests being served", registry=r)
        self.rejected = Counter("chatfactory_overload_rejections", "Requests refused with 429", registry=r)
        self.prompt_tokens = Counter("chatfactory_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("chatfactory_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram(
            "chatfactory_time_to_first_token_seconds", "Time to the first shown token", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.answer_seconds = Histogram(
            "chatfactory_answer_seconds", "Time per answer", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.finish = Counter("chatfactory_answers", "Answers by finish reason", ["model", "finish_reason"], registry=r)
        self.flagged = Counter("chatfactory_moderation_flagged", "Texts flagged by moderation", ["side"], registry=r)

    def watch_engines(self, engines: dict) -> None:
        """Export the engines' own counters, read at each scrape: mean batch size is
        engine_tokens / engine_decode_steps over an interval."""
        self.registry.register(_EngineCollector(engines))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    def __init__(self, engines: dict) -> None:
        self.engines = engines

    def describe(self):
        return []  # collected at scrape time only

    def collect(self):
        steps = CounterMetricFamily("chatfactory_engine_decode_steps", "Decode steps (one model call for the whole batch)", labels=["model"])
        tokens = CounterMetricFamily("chatfactory_engine_tokens", "Tokens the engine generated", labels=["model"])
        running = GaugeMetricFamily("chatfactory_engine_running", "Sequences in the running batch now", labels=["model"])
        reused = CounterMetricFamily(
            "chatfactory_prefix_cache_reused_tokens", "Prompt tokens whose prefill the prefix cache saved", labels=["model"]
        )
        seconds = CounterMetricFamily(
            "chatfactory_engine_seconds", "Engine thread time: decode steps, or admitting newcomers (prefill)",
            labels=["model", "phase"],
        )
        admitted = CounterMetricFamily("chatfactory_engine_admitted", "Requests admitted to the batch", labels=["model"])
        waited = CounterMetricFamily(
            "chatfactory_engine_queue_wait_seconds", "Summed time requests waited in the queue before admission",
            labels=["model"],
        )
        for name, e in self.engines.items():
            steps.add_metric([name], e.decode_steps)
            tokens.add_metric([name], e.tokens_generated)
            running.add_metric([name], e.batch_size)
            reused.add_metric([name], e.prefix_cache.reused_tokens if e.prefix_cache is not None else 0)
            seconds.add_metric([name, "decode"], e.decode_seconds)
            seconds.add_metric([name, "admit"], e.admit_seconds)
            admitted.add_metric([name], e.admitted)
            waited.add_metric([name], e.queue_wait_seconds)
        yield from (steps, tokens, running, reused, seconds, admitted, waited)
