"""The server's Prometheus metrics: requests, queue, batches, time in queue and in the model, tokens per second.

One registry per app (not the global one), so that several apps in one process (tests) count apart.
"""

from __future__ import annotations

from collections.abc import Callable

from minibert.dynamic_batching import BatchStats

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("minibert_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.queue_depth = Gauge("minibert_queue_depth", "texts waiting for the model", registry=r)
        self.queue_tokens = Gauge("minibert_queue_tokens", "tokens waiting for the model, and the estimated tokens of "
                                  "admitted requests still being read or tokenised", registry=r)
        self.failures = Counter("minibert_failures", "failures by kind (timeouts, refused connections, forward "
                                "errors, asyncio errors...); the log has one line per kind per minute", ["kind"],
                                registry=r)
        self.batch_texts = Histogram("minibert_batch_texts", "texts per forward pass", ["kind"], registry=r,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_tokens = Histogram("minibert_batch_tokens", "real tokens per forward pass", ["kind"], registry=r,
                                      buckets=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768))
        self.padding = Histogram("minibert_batch_padding_fraction",
                                 "padding positions / all positions of the padded batch (what packing removes)",
                                 ["kind"], registry=r, buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0))
        self.queue_seconds = Histogram("minibert_queue_seconds", "time a text waited before its forward pass",
                                       ["kind"], registry=r, buckets=SECONDS)
        self.model_seconds = Histogram("minibert_model_seconds", "time of one forward pass", ["kind"], registry=r,
                                       buckets=SECONDS)
        self.tokens = Counter("minibert_tokens", "real tokens run through the model", ["kind"], registry=r)
        self.texts = Counter("minibert_texts", "texts run through the model", ["kind"], registry=r)
        self.tokens_per_second = Gauge("minibert_tokens_per_second",
                                       "real tokens per second of model time, over the last forward pass", registry=r)

    def track_queue(self, depth: Callable[[], int], tokens: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)
        self.queue_tokens.set_function(tokens)

    def failure(self, kind: str) -> None:
        self.failures.labels(kind).inc()

    def request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def on_batch(self, stats: BatchStats) -> None:
        """Called by the batcher's worker after each forward pass."""
        kind = stats.kind
        self.batch_texts.labels(kind).observe(stats.texts)
        self.batch_tokens.labels(kind).observe(stats.tokens)
        self.padding.labels(kind).observe(stats.padding_fraction)
        for seconds in stats.queue_seconds:
            self.queue_seconds.labels(kind).observe(seconds)
        self.model_seconds.labels(kind).observe(stats.model_seconds)
        self.tokens.labels(kind).inc(stats.tokens)
        self.texts.labels(kind).inc(stats.texts)
        if stats.model_seconds > 0:
            self.tokens_per_second.set(stats.tokens / stats.model_seconds)
