"""Prometheus metrics, correct under several gunicorn workers.

With `PROMETHEUS_MULTIPROC_DIR` set before this module is imported, prometheus_client keeps
each worker's values in mmapped files there and `/metrics` sums them across workers, so a
scrape answered by any worker sees all admissions. `serve` owns that directory: it makes it
empty at start, marks exited workers dead and removes it at exit.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from webhook.admission import OUTCOMES

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Admission answers in about a millisecond; resolve 0.25–10 ms finely, then coarser up to the
# API server's timeout.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
    0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

ADMISSIONS = Counter(
    "hpc_offload_admissions", "Admission reviews answered, by outcome.", ["outcome"]
)
LATENCY = Histogram(
    "hpc_offload_admission_duration_seconds",
    "Time to answer one admission review (body read to response built).",
    buckets=LATENCY_BUCKETS,
)
# Bound once: exports zeros, so rate() works from the first scrape, and spares every admission
# the labels() lookup.
_BY_OUTCOME = {outcome: ADMISSIONS.labels(outcome) for outcome in OUTCOMES}


def observe(outcome: str, seconds: float | None) -> None:
    """Count one admission; `seconds` None for a request refused before it was timed."""
    (_BY_OUTCOME.get(outcome) or ADMISSIONS.labels(outcome)).inc()
    if seconds is not None:
        LATENCY.observe(seconds)


def render() -> tuple[bytes, str]:
    """The exposition text (summed over workers in multiprocess mode) and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (counters and histograms keep their totals)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

