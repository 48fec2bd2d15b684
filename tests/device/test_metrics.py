"""The daemon's `/metrics` on the panel listener (device/metrics.py), scraped from a real daemon
process serving real viewers and a real aiohttp upstream, parsed with prometheus-client's
parser; and docs/grafana-dashboard.json, whose queries must name only metrics that a real
daemon and signaling server expose."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from peerproxyd.device.metrics import ERROR_KINDS, OTHER_SERVICE, PATHS
from peerproxyd.protocol import ErrorCode, Flag, Frame
from peerproxyd.rtc.sdp_restart import keep_session
from peerproxyd.signaling.server import build_signaling_app
from tests.signaling.test_redis import RedisServer
from tests.support.procs import free_port
from tests.support.rawpeer import RawPeer
from tests.support.stack import Stack

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
UPLOAD = 100_000
HELLO = b"hello from camera\n"


@dataclass
class Device:
    metrics_url: str
    stack: Stack


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    stack = Stack(tmp_path_factory.mktemp("metrics"))
    port = free_port()
    try:
        camera = stack.upstream("camera")
        stack.signal()
        stack.extra_config = (
            f'[daemon]\npanel = "127.0.0.1:{port}"\npanel_allow = ["127.0.0.1"]\n'
            f'[services.slow]\nupstream = "{camera}"\nread_timeout = 1.0\n'
        )
        # `down`: nothing listens there (a stopped upstream).
        stack.daemon({"camera": stack.upstream_ports["camera"], "down": free_port()})
        stack.procs["daemon"].wait_for_log("status panel on")
        yield Device(f"http://127.0.0.1:{port}/metrics", stack)
    finally:
        stack.stop()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def wait_peers(url: str, count: int) -> Samples:
    """The scrape once `count` peers are connected (sessions end a moment after the viewer)."""
    samples: Samples = {}
    for _ in range(200):
        samples = await scrape(url)
        if sum(value(samples, "peerproxyd_peers", path=p) for p in PATHS) == count:
            return samples
        await asyncio.sleep(0.1)
    raise AssertionError(f"not {count} peers: {samples}")


async def restart_ice(peer: RawPeer) -> str:
    """An ICE restart offered by the (aiortc) viewer; what the device answered with."""
    answers = len([m for m in peer.messages if m.type in ("answer", "bye")])
    offer, restart = await peer.pc.restart_offer()
    await peer.signaling.send(
        "offer", peer.device, {"sdp": keep_session(offer, peer.offer), "type": "offer"})
    for _ in range(200):
        replies = [m for m in peer.messages if m.type in ("answer", "bye")]
        if len(replies) > answers:
            break
        await asyncio.sleep(0.05)
    reply = replies[-1]
    if reply.type == "answer":
        assert await peer.pc.finish_restart(restart, reply.payload["sdp"])
    else:
        await restart.cancel()
    return str(reply.type)


async def test_requests_bytes_latency_errors_streams_and_peers_are_counted(device: Device):
    url, stack = device.metrics_url, device.stack
    before = await wait_peers(url, 0)

    def delta(name: str, **labels: str) -> float:
        return value(now, name, **labels) - value(before, name, **labels)

    async with RawPeer(stack.signal_url, stack.link("camera"), backend="aiortc") as viewer:
        head, body = await viewer.request("camera", "/")
        assert (head.status, body) == (200, HELLO)
        head, uploaded = await viewer.request("camera", "/upload", method="POST",
                                              body=b"x" * UPLOAD)
        assert head.status == 200 and json.loads(uploaded)["size"] == UPLOAD
        head, _ = await viewer.request("down", "/")  # not this viewer's service
        assert head.status == 403
        live = await scrape(url)
        assert value(live, "peerproxyd_peers", path="host") == 1  # 127.0.0.1 to 127.0.0.1
        assert value(live, "peerproxyd_open_streams") == 0
        backend = next(dict(labels)["backend"] for name, labels in live
                       if name == "peerproxyd_build_info")
        answered = await restart_ice(viewer)  # aiortc restarts; native says bye
        assert answered == ("answer" if backend == "aiortc" else "bye")
    async with RawPeer(stack.signal_url, stack.link("down")) as viewer:
        head, body = await viewer.request("down", "/")
        assert head.status == 502 and body.startswith(b"upstream down unreachable")
    async with RawPeer(stack.signal_url, stack.link("slow")) as viewer:
        head, _ = await viewer.request("slow", "/slow?s=4")
        assert head.status == 504
    async with RawPeer(stack.signal_url, stack.link("nope")) as viewer:
        head, _ = await viewer.request("nope", "/")
        assert head.status == 404
        viewer.send_raw(bytes(Frame(2, 0, Flag(0), b"junk")))  # BODY before HEADERS
        reset = await viewer.wait_for_frame(lambda f: f.stream_id == 2 and f.flags & Flag.RESET)
        assert reset.reset_fields()[0] == ErrorCode.PROTOCOL_ERROR
    now = await wait_peers(url, 0)

    requests = "peerproxyd_requests_total"
    assert delta(requests, service="camera", status="2xx") == 2
    assert delta(requests, service="down", status="4xx") == 1
    assert delta(requests, service="down", status="5xx") == 1
    assert delta(requests, service="slow", status="5xx") == 1
    assert delta(requests, service=OTHER_SERVICE, status="4xx") == 1
    assert sum(v for (name, _), v in now.items() if name == requests) - sum(
        v for (name, _), v in before.items() if name == requests) == 6
    assert delta("peerproxyd_received_bytes_total", service="camera") == UPLOAD
    assert delta("peerproxyd_sent_bytes_total", service="camera") == len(HELLO) + len(uploaded)
    histogram = "peerproxyd_response_head_seconds"
    assert delta(f"{histogram}_count", service="camera") == 2
    assert delta(f"{histogram}_bucket", service="camera", le="+Inf") == 2
    assert delta(f"{histogram}_count", service="slow") == 1
    assert delta(f"{histogram}_sum", service="slow") >= 1.0  # the service's read_timeout
    errors = {kind: delta("peerproxyd_errors_total", kind=kind) for kind in ERROR_KINDS}
    assert {k: n for k, n in errors.items() if n} == {
        "forbidden": 1, "upstream_down": 1, "upstream_timeout": 1, "unknown_service": 1,
        "bad_frame": 1}
    assert delta("peerproxyd_ice_restarts_total") == (1 if backend == "aiortc" else 0)
    assert value(now, "peerproxyd_open_streams") == 0
    assert {p: value(now, "peerproxyd_peers", path=p) for p in PATHS} == dict.fromkeys(PATHS, 0)


async def test_metrics_are_behind_the_panels_allow_list(device: Device):
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        async with other.get(device.metrics_url) as r:
            assert r.status == 403


def test_the_dashboard_is_importable_grafana_json(device: Device):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["title"]
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 8
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


async def test_the_dashboard_asks_only_for_metrics_that_exist(
    device: Device, tmp_path: Path, aiohttp_client: Any
):
    """Against the daemon of `device` and a signaling server with Redis (redis_up is there
    only with Redis)."""
    exposed = {name for name, _ in await scrape(device.metrics_url)}
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        signaling = await aiohttp_client(build_signaling_app(redis_url=redis.url))
        try:
            exposed |= {name for name, _ in await scrape(str(signaling.make_url("/metrics")))}
        finally:
            await signaling.close()
    finally:
        redis.stop()
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    used = {name for q in queries for name in re.findall(r"\bpeerproxyd_[a-z_]+", q)}
    assert used and used <= exposed, used - exposed
    assert "peerproxyd_signal_redis_up" in used and "peerproxyd_requests_total" in used


LOCAL_NAME_PEERS = """
import asyncio, json, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "link", "set", "lo", "multicast", "on"], check=True)
subprocess.run(["ip", "route", "add", "224.0.0.0/4", "dev", "lo"], check=True)
import aioice.ice, aioice.mdns
from peerproxyd.appliance import mdns
from peerproxyd.config import IceSettings
from peerproxyd.device.metrics import path_of
from peerproxyd.rtc.aiortc_setup import configure_ice
from peerproxyd.rtc.transport import CHANNEL_LABEL, new_transport

ICE = IceSettings(host_addresses=["127.0.0.1"])

async def main(backend):
    configure_ice(ICE)
    viewer, device = new_transport(ICE, backend="aiortc"), new_transport(ICE, backend=backend)
    connected = asyncio.Event()
    device.on_state(lambda state: state == "connected" and connected.set())
    device.on_channel(lambda channel: None)
    viewer.create_channel(CHANNEL_LABEL)
    offer = await viewer.offer()
    # The viewer's host address behind a `.local` name, as browsers offer it.
    name = aioice.mdns.create_mdns_hostname()
    await (await aioice.ice.get_or_create_mdns_protocol(viewer)).publish(name, "127.0.0.1")
    offer = offer.replace(" 127.0.0.1 ", f" {name} ")
    await viewer.set_answer(await device.answer(offer))
    await asyncio.wait_for(connected.wait(), 20)
    report = await device.report()
    print(json.dumps({"report": report.as_dict(), "path": path_of(report)}), flush=True)
    await viewer.close()
    await device.close()
    await mdns.release(viewer)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("backend", ["aiortc", "native"])
def test_both_backends_report_a_remote_local_name_as_the_mdns_path(backend: str):
    """A viewer whose host candidate is a `.local` name (a browser's) is on the path "mdns",
    whichever backend the device runs; in a network namespace of its own, loopback only."""
    from peerproxyd.rtc.transport import native_available

    if backend == "native" and not native_available():
        pytest.skip("libdatachannel-py not importable (`make test-native`)")
    if not os.path.exists("/proc/self/ns/net") or os.geteuid() != 0:
        pytest.skip("needs root for a namespace")
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", LOCAL_NAME_PEERS, backend],
        capture_output=True, text=True, timeout=90, cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.splitlines()[-1])
    assert measured["report"]["backend"] == backend
    assert measured["report"]["remote_mdns"] is True, measured
    assert measured["path"] == "mdns"
