"""DEE's own Prometheus metrics, and the worker's metrics endpoint.

=============================  ==================  =============================================
metric                         labels              counts or times
=============================  ==================  =============================================
``dee_sends_total``            channel, status     sends by how they ended: ``sent``,
                                                   ``already-sent``, ``placed``,
                                                   ``already-placed``, ``suppressed``,
                                                   ``failed`` (permanent), ``error`` (retried),
                                                   ``cancelled``
``dee_send_seconds``           channel             the provider's part of a send: the SMTP
                                                   conversation, Twilio's create-call request
``dee_render_seconds``         channel             rendering a step's template or call script
``dee_suppressions_total``     channel, reason     addresses and numbers newly suppressed
``dee_tracking_hits_total``    kind                opens, clicks and unsubscribes kept
``dee_signals_total``          type, outcome       events sent to runs: ``signalled``,
                                                   ``run-closed``, ``run-not-found``, ``busy``,
                                                   ``error``
=============================  ==================  =============================================

plus prometheus_client's ``process_*`` metrics. Labels hold only those words: never a run,
step or contact id, an address or a URL, so nothing a contact sends can add a series.

Each process counts what it does itself: the worker its sends and renders, ``dee serve``
its hits, signals and the suppressions of unsubscribes and webhooks. The worker serves its
metrics and the Temporal SDK's on one port, ``DEE_WORKER_METRICS_ADDRESS`` (:func:`serve`);
``dee serve`` answers ``GET /metrics`` (:mod:`dee.server.metrics_route`).

prometheus_client is imported on first use, so ``import dee`` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dee.settings import split_address

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric
    from temporalio.runtime import Runtime

__all__ = [
    "CONTENT_TYPE",
    "count_hits",
    "count_send",
    "count_signal",
    "count_suppression",
    "exposition",
    "registry",
    "sdk_runtime",
    "serve",
    "timed",
]

logger = logging.getLogger(__name__)

#: The text exposition format's content type.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Buckets of the latencies, in seconds: a render takes milliseconds, an SMTP conversation
#: up to the minute DEE_SMTP_URL's timeout allows.
_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True, slots=True)
class _Metrics:
    registry: CollectorRegistry
    sends: Counter
    send_seconds: Histogram
    render_seconds: Histogram
    suppressions: Counter
    hits: Counter
    signals: Counter


_lock = threading.Lock()
_made: _Metrics | None = None


def _metrics() -> _Metrics:
    global _made
    with _lock:
        if _made is None:
            from prometheus_client import (
                CollectorRegistry,
                Counter,
                Histogram,
                ProcessCollector,
                disable_created_metrics,
            )

            # The *_created series (when each labelled series began) double what a scrape
            # carries for nothing Prometheus uses.
            disable_created_metrics()  # type: ignore[no-untyped-call]
            reg = CollectorRegistry()
            ProcessCollector(registry=reg)
            _made = _Metrics(
                registry=reg,
                sends=Counter(
                    "dee_sends", "Sends by how they ended", ["channel", "status"], registry=reg
                ),
                send_seconds=Histogram(
                    "dee_send_seconds",
                    "Seconds the provider's part of a send took",
                    ["channel"],
                    buckets=_BUCKETS,
                    registry=reg,
                ),
                render_seconds=Histogram(
                    "dee_render_seconds",
                    "Seconds rendering a step's content took",
                    ["channel"],
                    buckets=_BUCKETS,
                    registry=reg,
                ),
                suppressions=Counter(
                    "dee_suppressions",
                    "Addresses and numbers newly put on the suppression list",
                    ["channel", "reason"],
                    registry=reg,
                ),
                hits=Counter(
                    "dee_tracking_hits", "Tracking hits kept, by kind", ["kind"], registry=reg
                ),
                signals=Counter(
                    "dee_signals",
                    "Events sent to runs, by type and outcome",
                    ["type", "outcome"],
                    registry=reg,
                ),
            )
        return _made


def registry() -> CollectorRegistry:
    """The registry DEE's metrics are in."""
    return _metrics().registry


def count_send(channel: str, status: str) -> None:
    _metrics().sends.labels(channel=channel, status=status).inc()


def count_suppression(channel: str, reason: str) -> None:
    _metrics().suppressions.labels(channel=channel, reason=reason).inc()


def count_hits(kinds: Iterable[str]) -> None:
    hits = _metrics().hits
    for kind in kinds:
        hits.labels(kind=kind).inc()


def count_signal(type: str, outcome: str) -> None:
    _metrics().signals.labels(type=type, outcome=outcome).inc()


@contextlib.contextmanager
def timed(what: str, channel: str) -> Iterator[None]:
    """Time the block into ``dee_<what>_seconds`` (``render`` or ``send``), however it ends."""
    metrics = _metrics()
    histogram = metrics.render_seconds if what == "render" else metrics.send_seconds
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(channel=channel).observe(time.perf_counter() - started)


def exposition() -> bytes:
    """DEE's metrics in the text format (:data:`CONTENT_TYPE`)."""
    from prometheus_client import generate_latest

    return generate_latest(registry())


class _Forwarded:
    """The metrics another endpoint of this process serves (the Temporal SDK's, from its
    Rust runtime), read and passed on at each scrape."""

    def __init__(self, url: str) -> None:
        self.url = url

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(self.url, timeout=5) as answer:
                text = answer.read().decode("utf-8")
        except OSError as exc:
            logger.warning("the Temporal SDK's metrics at %s did not answer: %s", self.url, exc)
            return
        yield from text_string_to_metric_families(text)


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """The worker's metrics endpoint while it runs; :meth:`close` stops it."""

    host: str
    port: int
    _server: Any

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(address: str, *, forward: str | None = None) -> MetricsServer:
    """Serve DEE's metrics (and those at the URL ``forward``, the SDK's) at ``address``
    (``host:port``, as ``DEE_WORKER_METRICS_ADDRESS``), on any path, in a thread."""
    from prometheus_client import CollectorRegistry, start_http_server

    host, port = split_address(address, name="DEE_WORKER_METRICS_ADDRESS")
    served = CollectorRegistry()
    served.register(_metrics().registry)
    if forward is not None:
        served.register(_Forwarded(forward))
    try:
        server, _thread = start_http_server(port, addr=host, registry=served)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"DEE_WORKER_METRICS_ADDRESS is {address!r}, where the worker cannot serve metrics "
            f"({exc.strerror or exc}): choose a free port on an address of this host",
        ) from None
    return MetricsServer(host, server.server_port, server)


def sdk_runtime() -> tuple[Runtime, str]:
    """A Temporal runtime exporting the SDK's metrics on a free loopback port, and their
    URL, for :func:`serve` to pass on (the SDK's exporter serves one registry of its own)."""
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    runtime = Runtime(
        telemetry=TelemetryConfig(
            # Seconds and `_total` counters, as Prometheus names them (the SDK's defaults are
            # milliseconds and bare counter names); passing through prometheus_client's parser
            # would add the suffix anyway.
            metrics=PrometheusConfig(
                bind_address=address, durations_as_seconds=True, counters_total_suffix=True
            )
        )
    )
    return runtime, f"http://{address}/metrics"
