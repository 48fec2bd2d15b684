"""The daemon's metrics, served as Prometheus text at `GET /metrics` on the panel listener.

Counted where things happen: requests, bytes and the time to the response head by the Router,
errors where each is decided (router.py, websocket_upstream.py, peer.py, each peer's
ChannelLink, the draining daemon), ICE restarts by the PeerSession. Open streams and peers by
path are read from the live sessions at scrape time. Each daemon has a CollectorRegistry of its
own, never prometheus-client's global one (tests run several daemons in one process).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from peerproxyd.rtc.report import ConnectionReport

ERROR_KINDS = {
    "unknown_service": "a request for a service not configured (404)",
    "forbidden": "a request for a service the viewer's link does not grant (403)",
    "bad_request": "a request the proxy's rules refuse (400, 413, 431, ...)",
    "upstream_down": "the upstream refused the connection or did not accept it in time (502)",
    "upstream_timeout": "no response head within the service's read_timeout (504)",
    "upstream_error": "the upstream failed after connecting (502, or a reset mid-body)",
    "peer_gone": "the viewer reset the stream or left before the response was complete",
    "shutting_down": "a request refused while the daemon drains (503)",
    "internal": "a bug: the stream was reset and the traceback logged",
    "too_many_streams": "a stream beyond [limits] max_streams_per_peer (REFUSED_STREAM)",
    "bad_frame": "a message the protocol refused: its stream reset, or the message dropped",
    "stalled": "a stream reset after waiting stall_timeout for the viewer's window",
    "slow_peer": "a peer closed for not reading its data channel",
    "peer_silent": "a peer closed after heartbeat_timeout without a message",
    "auth_refused": "a viewer refused at authentication (unknown, revoked, bad proof, busy)",
}
"""Every kind of `peerproxyd_errors_total`; all are exported from the start (at 0)."""
PATHS = ("host", "srflx", "prflx", "relay", "mdns", "connecting")
"""Values of `peerproxyd_peers{path}`; `connecting` until ICE has selected a pair."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds from a request's head to its response head (read_timeout is 30 s by default)."""
OTHER_SERVICE = "_other"
"""The service label of a request for no configured service: viewers choose that name, and
must not mint label values (a service name never starts with `_`)."""


class LivePeer(Protocol):
    """What the scrape reads of each peer session."""

    @property
    def open_streams(self) -> int: ...

    @property
    def path(self) -> str | None: ...


def path_of(report: ConnectionReport) -> str:
    """host, srflx, prflx, relay, or mdns (a host pair whose remote was a `.local` name)."""
    if report.type == "relay":
        return "relay"
    if report.remote_mdns:
        return "mdns"
    types = {report.local_type, report.remote_type}
    if "srflx" in types:
        return "srflx"
    return "prflx" if "prflx" in types else "host"


def status_class(status: int) -> str:
    """`2xx` and so on; `reset` for a stream that ended without a status."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "reset"


class DaemonMetrics:
    """The daemon's counters and histogram, and the live gauges `peers()` yields."""

    def __init__(
        self, peers: Callable[[], Iterable[LivePeer]] = lambda: (), *, version: str = "",
        backend: str = "",
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "peerproxyd_requests", "requests served, by service and status class",
            ["service", "status"], registry=registry)
        self.received = Counter(
            "peerproxyd_received_bytes", "request body bytes (and WebSocket records) from viewers",
            ["service"], registry=registry)
        self.sent = Counter(
            "peerproxyd_sent_bytes", "response body bytes (and WebSocket records) to viewers",
            ["service"], registry=registry)
        self.head_seconds = Histogram(
            "peerproxyd_response_head_seconds", "seconds from a request to its response head",
            ["service"], buckets=LATENCY_BUCKETS, registry=registry)
        self.ice_restarts = Counter(
            "peerproxyd_ice_restarts", "ICE restarts completed on live connections",
            registry=registry)
        self.errors = Counter(
            "peerproxyd_errors", "errors by kind (docs/deploy.md, Metrics)", ["kind"],
            registry=registry)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        Info("peerproxyd_build", "version and WebRTC backend",
             registry=registry).info({"version": version, "backend": backend})
        registry.register(_LiveCollector(peers))

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def request(
        self, service: str, status: int, *, received: int, sent: int,
        head_seconds: float | None,
    ) -> None:
        """One finished request (or WebSocket) of `service` (a configured name or
        OTHER_SERVICE); `head_seconds` is None if no response head was sent."""
        self.requests.labels(service, status_class(status)).inc()
        self.received.labels(service).inc(received)
        self.sent.labels(service).inc(sent)
        if head_seconds is not None:
            self.head_seconds.labels(service).observe(head_seconds)


class _LiveCollector(Collector):
    def __init__(self, peers: Callable[[], Iterable[LivePeer]]) -> None:
        self.peers = peers

    def describe(self) -> Iterator[Metric]:
        return self._families(())

    def collect(self) -> Iterator[Metric]:
        return self._families(list(self.peers()))

    @staticmethod
    def _families(peers: Iterable[LivePeer]) -> Iterator[Metric]:
        paths: Tally[str] = Tally()
        streams = 0
        for peer in peers:
            paths[peer.path or "connecting"] += 1
            streams += peer.open_streams
        gauge = GaugeMetricFamily("peerproxyd_open_streams", "streams open on every peer")
        gauge.add_metric([], streams)
        yield gauge
        gauge = GaugeMetricFamily("peerproxyd_peers", "connected peers by ICE path",
                                  labels=["path"])
        for path in PATHS:
            gauge.add_metric([path], paths[path])
        yield gauge
