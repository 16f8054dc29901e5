"""omoe-serve's Prometheus metrics (served at /metrics): requests by model and HTTP status,
request latency, items per ONNX Runtime run and its duration, and the items waiting in each
model's queue. One registry per server, so that several servers in one process (tests)
count apart."""

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNKNOWN = "_unknown"  # the model label of requests to a name that is not served
LATENCY_BUCKETS = (.001, .0025, .005, .0075, .01, .015, .025, .05, .075, .1, .25, .5, 1, 2.5, 5,
                   10, 30)


class Metrics:
    """The counters and histograms of one server."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("omoe_serve_requests", "Inference requests answered, by model "
                                "and HTTP status", ["model", "status"], registry=self.registry)
        self.latency = Histogram("omoe_serve_request_seconds", "Inference request latency, from "
                                 "its arrival to its answer", ["model"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        sizes = sorted({2 ** i for i in range(max_batch.bit_length())} | {max_batch})
        self.batch_size = Histogram("omoe_serve_batch_size", "Items per ONNX Runtime run (one "
                                    "micro-batch)", ["model"], buckets=sizes,
                                    registry=self.registry)
        self.batch_seconds = Histogram("omoe_serve_batch_seconds", "Duration of one micro-batch "
                                       "(tokenisation and ONNX Runtime)", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge("omoe_serve_queue_items", "Items waiting for a micro-batch",
                           ["model"], registry=self.registry)

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        """Read a model's queue depth when scraped."""
        self.queue.labels(model=model).set_function(depth)

    def request(self, model: str, status: int, seconds: float) -> None:
        self.requests.labels(model=model, status=str(status)).inc()
        self.latency.labels(model=model).observe(seconds)

    def batch(self, model: str) -> Callable[[int, float], None]:
        """The MicroBatcher callback that records one model's runs."""
        size, duration = self.batch_size.labels(model=model), self.batch_seconds.labels(model=model)

        def record(items: int, seconds: float) -> None:
            size.observe(items)
            duration.observe(seconds)
        return record

    def answered(self) -> dict[str, int]:
        """Requests answered so far, by HTTP status (for the log line at shutdown)."""
        counts: dict[str, int] = {}
        for metric in self.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    status = sample.labels["status"]
                    counts[status] = counts.get(status, 0) + int(sample.value)
        return counts

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
