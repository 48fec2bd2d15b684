"""The signaling server's /metrics: prometheus-client's exposition, one registry per app."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.signaling.test_server import ClientFactory, D, connect, make_app, recv, register, send

NAMES = {
    "peerproxyd_signal_devices", "peerproxyd_signal_peers", "peerproxyd_signal_sessions",
    "peerproxyd_signal_registrations", "peerproxyd_signal_registrations_refused",
    "peerproxyd_signal_takeovers", "peerproxyd_signal_messages_delivered",
    "peerproxyd_signal_messages_routed_out", "peerproxyd_signal_messages_routed_in",
    "peerproxyd_signal_messages_offline", "peerproxyd_signal_rate_limited",
    "peerproxyd_signal_redis_errors", "peerproxyd_signal_redis_reconnects",
    "peerproxyd_signal_reannounced",
}
"""Without Redis: every family but redis_up."""


async def scrape(client: TestClient[Any, Any]) -> dict[str, float]:
    """Sample name (`..._total` for counters) -> value, all labelled instance="local"."""
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert response.headers["Cache-Control"] == "no-store"
    families = list(text_string_to_metric_families(await response.text()))
    assert {f.name for f in families} == NAMES
    samples = [s for f in families for s in f.samples]
    assert {s.labels["instance"] for s in samples} == {"local"}
    return {s.name: s.value for s in samples}


async def test_metrics_count_what_happens_and_read_the_gauges_live(
    aiohttp_client: ClientFactory,
) -> None:
    client, other = await aiohttp_client(make_app()), await aiohttp_client(make_app())
    assert (await scrape(client))["peerproxyd_signal_devices"] == 0
    device = await register(client)
    peer, peer_id = await connect(client)
    await send(peer, type="offer", to=D, payload={"n": 1})
    assert (await recv(device))["from"] == peer_id
    await send(peer, type="offer", to="nobody", payload={})
    assert (await recv(peer))["code"] == "device-offline"

    figures = await scrape(client)
    assert figures["peerproxyd_signal_devices"] == 1
    assert figures["peerproxyd_signal_peers"] == 1
    assert figures["peerproxyd_signal_sessions"] == 1
    assert figures["peerproxyd_signal_registrations_total"] == 1
    assert figures["peerproxyd_signal_messages_delivered_total"] == 1
    assert figures["peerproxyd_signal_messages_offline_total"] == 1
    # The JSON form says the same.
    response = await client.get("/metrics?format=json")
    as_json = await response.json()
    assert as_json["instance"] == "local"
    assert (as_json["devices"], as_json["registrations"], as_json["messages_delivered"]) == (
        1, 1, 1)
    # Another app in the same process has a registry of its own.
    other_figures = await scrape(other)
    assert other_figures["peerproxyd_signal_registrations_total"] == 0
    assert other_figures["peerproxyd_signal_devices"] == 0

    await device.close()
    await peer.close()
    for _ in range(100):
        figures = await scrape(client)
        if figures["peerproxyd_signal_devices"] == 0 and figures["peerproxyd_signal_peers"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (figures["peerproxyd_signal_devices"], figures["peerproxyd_signal_peers"]) == (0, 0)
