"""Counters of one signaling instance, served at `GET /metrics`.

Prometheus text by default; JSON with `?format=json`. Counters only grow; gauges (devices,
peers, sessions, Redis up) are read from the live state when /metrics is asked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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


def render_json(
    metrics: SignalMetrics, gauges: dict[str, float], instance: str
) -> dict[str, object]:
    return {"instance": instance, **gauges, **metrics.as_dict()}


def render_prometheus(metrics: SignalMetrics, gauges: dict[str, float], instance: str) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    label = '{instance="%s"}' % instance.replace("\\", "\\\\").replace('"', '\\"')
    lines: list[str] = []
    for name, value in gauges.items():
        full = PREFIX + name
        lines += [f"# HELP {full} {_GAUGE_HELP.get(name, name)}", f"# TYPE {full} gauge",
                  f"{full}{label} {value:g}"]
    for name, count in metrics.as_dict().items():
        full = f"{PREFIX}{name}_total"
        lines += [f"# HELP {full} {_HELP[name]}", f"# TYPE {full} counter",
                  f"{full}{label} {count}"]
    return "\n".join(lines) + "\n"
