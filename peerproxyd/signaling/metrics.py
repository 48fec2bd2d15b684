"""Counters of one signaling instance, served at `GET /metrics`.

Prometheus exposition (prometheus-client, one CollectorRegistry per app: tests run several
instances in one process) by default; JSON with `?format=json`. Counters only grow; gauges
(devices, peers, sessions, Redis up) are read from the live state when /metrics is asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "peerproxyd_signal_"

_HELP = {
    "registrations": "device registrations accepted here",
    "registrations_refused": "registrations refused (secret, id, or backend unavailable)",
    "takeovers": "devices replaced by a newer registration (here or on another instance)",
    "messages_delivered": "relay messages handed to a connection of this instance",
    "messages_routed_out": "relay messages published to another instance",
    "messages_routed_in": "relay messages received from another instance",
    "messages_offline": "relay messages whose recipient was offline",
    "rate_limited": "messages dropped by a rate limit",
    "redis_errors": "failed Redis calls (connection lost, timeout, error reply)",
    "redis_reconnects": "times Redis came back after an outage",
    "reannounced": "device presences written again after Redis lost them",
}
_GAUGE_HELP = {
    "devices": "devices registered on this instance",
    "peers": "anonymous connections (viewers) on this instance",
    "sessions": "viewer-device pairs whose device is registered here",
    "redis_up": "1 if the last Redis call succeeded (absent without Redis)",
}


@dataclass(slots=True)
class SignalMetrics:
    registrations: int = 0
    registrations_refused: int = 0
    takeovers: int = 0
    messages_delivered: int = 0
    messages_routed_out: int = 0
    messages_routed_in: int = 0
    messages_offline: int = 0
    rate_limited: int = 0
    redis_errors: int = 0
    redis_reconnects: int = 0
    reannounced: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


Gauges = Callable[[], tuple[dict[str, float], str]]
"""Reads the live gauges (name -> value) and the instance name, at scrape time."""


def render_json(
    metrics: SignalMetrics, gauges: dict[str, float], instance: str
) -> dict[str, object]:
    return {"instance": instance, **gauges, **metrics.as_dict()}


class SignalCollector(Collector):
    """The counters of `metrics` and the gauges `gauges()` reads, labelled by instance."""

    def __init__(self, metrics: SignalMetrics, gauges: Gauges) -> None:
        self.metrics = metrics
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        gauges, instance = self.gauges()
        for name, value in gauges.items():
            gauge = GaugeMetricFamily(PREFIX + name, _GAUGE_HELP.get(name, name),
                                      labels=["instance"])
            gauge.add_metric([instance], value)
            yield gauge
        for name, count in self.metrics.as_dict().items():
            counter = CounterMetricFamily(PREFIX + name, _HELP[name], labels=["instance"])
            counter.add_metric([instance], count)
            yield counter


def new_registry(metrics: SignalMetrics, gauges: Gauges) -> CollectorRegistry:
    """A registry of its own for one signaling app (never prometheus-client's global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SignalCollector(metrics, gauges))
    return registry
