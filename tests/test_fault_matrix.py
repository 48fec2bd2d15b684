"""The fault matrix (docs/reliability.md, "Fault matrix"): each fault hits a real stack while
transfers are in flight through a native client's local port (tests/support/transfers.py: three
downloads of random bodies, one without Content-Length, and a paced upload). Every transfer
must end `complete` (sha256 identical) or with a clear `error`, never `corrupt` or `hung`; then
a GET through the same viewer must succeed by itself within the fault's stated bound. The
measured recovery time (from the fault's end, or the restart's completion, to that GET's
answer) is printed and appended to $PEERPROXYD_FAULT_RESULTS (default: fault_matrix.json in
pytest's base temp directory), from which the table in docs/reliability.md is made.

Loopback faults use tests/support/stack.py; network faults (tc netem, an address change, a
blocked ICE restart) use the namespaces of tests/netns.py, with the viewer on the home LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.netns import DEV, LAN_VIEWER, NetStack, Network, unavailable_reason
from tests.signaling.test_redis import RedisServer
from tests.support import transfers as driver
from tests.support.procs import Proc
from tests.support.stack import Stack

pytestmark = pytest.mark.timeout(240)

RESULTS_ENV = "PEERPROXYD_FAULT_RESULTS"
NEW_DEV = "192.168.50.11"
RUN_TIMEOUT = 120.0
"""Seconds a transfer may take before it counts as hung."""
NETEM_WINDOW = 5.0
"""Seconds a netem impairment lasts, with the transfers in flight."""


def load(duration: float, seed: int = 1) -> list[driver.Transfer]:
    """Three downloads and an upload, each lasting about `duration` seconds unless cut."""
    sizes = [("get-3MB", "GET", 3_000_000, False), ("get-2MB-chunked", "GET", 2_000_000, True),
             ("get-1MB", "GET", 1_000_000, False), ("post-2MB", "POST", 2_000_000, False)]
    return [driver.Transfer(name, method, size, seed + i, int(size / duration), chunked)
            for i, (name, method, size, chunked) in enumerate(sizes)]


class Transfers:
    """A `tests.support.transfers run` process (in a namespace if `prefix` says so)."""

    def __init__(self, name: str, url: str, log_dir: Path, *, duration: float = 4.0,
                 prefix: tuple[str, ...] = ()) -> None:
        specs = json.dumps([t.__dict__ for t in load(duration)])
        self.proc = Proc(name, [*prefix, sys.executable, "-m", "tests.support.transfers",
                                "run", url, specs, str(RUN_TIMEOUT)], log_dir)

    def wait_in_flight(self) -> None:
        self.proc.wait_for_log(driver.IN_FLIGHT, timeout=60)

    async def outcomes(self) -> list[dict[str, Any]]:
        await asyncio.to_thread(self.proc.popen.wait, RUN_TIMEOUT + 30)
        self.proc.stop()
        return list(json.loads(self.proc.log().strip().splitlines()[-1]))


def verdicts(outcomes: list[dict[str, Any]]) -> dict[str, str]:
    return {o["name"]: o["verdict"] for o in outcomes}


def check(outcomes: list[dict[str, Any]], expect: str | None = None) -> None:
    """No transfer corrupt or hung; `expect` ("complete", "error"): every one ended so."""
    assert len(outcomes) == len(load(1.0))
    wrong = [o for o in outcomes if o["verdict"] not in ("complete", "error")
             or (expect and o["verdict"] != expect)]
    assert not wrong, json.dumps(outcomes, indent=1)


async def recovered(url: str, since: float, limit: float,
                    prefix: tuple[str, ...] = ()) -> dict[str, float]:
    """Seconds from `since` until a GET of `url`/ answered (`recovery_s`); fails beyond
    `limit`. From inside `prefix`'s namespace the probe is a process of its own: its start
    is part of that time, and is given as `probe_started_s`."""
    if prefix:
        out = await asyncio.to_thread(subprocess.run, [
            *prefix, sys.executable, "-m", "tests.support.transfers", "probe", url, str(limit),
        ], capture_output=True, text=True, timeout=limit + 30)
        result = json.loads(out.stdout)
    else:
        result = await driver.probe(url, limit)
    assert result["ok_at"] is not None, f"no answer within {limit} s: {result}"
    seconds = max(0.0, float(result["ok_at"]) - since)
    assert seconds <= limit
    return {"recovery_s": round(seconds, 2),
            "probe_started_s": round(max(0.0, float(result["started_at"]) - since), 2)}


@pytest.fixture
def record(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Callable[..., None]:
    """record(fault, recovered(...), outcomes, **more): print it, append it to the results."""
    path = Path(os.environ.get(RESULTS_ENV) or
                tmp_path_factory.getbasetemp() / "fault_matrix.json")

    def write(fault: str, recovery: dict[str, float], outcomes: list[dict[str, Any]],
              **more: Any) -> None:
        entry = {"test": request.node.name, "fault": fault, **recovery,
                 "outcomes": verdicts(outcomes),
                 "ended_after_s": {o["name"]: o["seconds"] for o in outcomes}, **more}
        print(f"\nFAULT {json.dumps(entry)}")
        data = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*data, entry], indent=1) + "\n")

    return write


# ----- loopback: restarts and a vanished viewer


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    yield stack
    stack.stop()


def serve(stack: Stack, *signal_options: str) -> tuple[Proc, Proc, str]:
    """Upstream, signaling, daemon and one native client: (daemon, client, client URL)."""
    stack.upstream("camera")
    stack.signal(*signal_options)
    daemon = stack.daemon({"camera": stack.upstream_ports["camera"]})
    client, url = stack.client("camera")
    return daemon, client, url


async def test_signaling_restart(stack: Stack, record):
    """The data path does not use the signaling server: nothing in flight notices."""
    _, _, url = serve(stack)
    load_ = Transfers("transfers", url, stack.log_dir)
    load_.wait_in_flight()
    stack.procs["signal"].stop()
    stack.signal()
    probe = asyncio.create_task(recovered(url, time.monotonic(), 10.0))
    outcomes = await load_.outcomes()
    record("signaling restart", await probe, outcomes)
    check(outcomes, "complete")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_daemon_restart(stack: Stack, record, sig: signal.Signals):
    """SIGTERM drains: what is in flight completes (new requests get 503). SIGKILL cuts it:
    each transfer ends with an error. Either way the client reconnects to the new daemon."""
    daemon, client, url = serve(stack)
    load_ = Transfers("transfers", url, stack.log_dir)
    load_.wait_in_flight()
    daemon.popen.send_signal(sig)
    if sig == signal.SIGTERM:  # draining: a new request is refused, with the reason
        daemon.wait_for_log("stopping: draining")
        async with aiohttp.ClientSession() as http, http.get(url + "/") as refused:
            assert (refused.status, await refused.text()) == (
                503, "device is shutting down\n"), refused
    await asyncio.to_thread(daemon.popen.wait, 30)  # a second SIGTERM would cut the drain
    daemon.stop()
    stack.daemon({"camera": stack.upstream_ports["camera"]})
    probe = asyncio.create_task(recovered(url, time.monotonic(), 30.0))
    outcomes = await load_.outcomes()
    record(f"daemon {sig.name}", await probe, outcomes)
    check(outcomes, "complete" if sig == signal.SIGTERM else "error")
    client.wait_for_log(rf"connected to {stack.device}/camera", count=2)


async def test_upstream_restart(stack: Stack, record):
    """The upstream dies mid-response: each transfer ends with an error, none looks whole."""
    _, _, url = serve(stack)
    load_ = Transfers("transfers", url, stack.log_dir)
    load_.wait_in_flight()
    stack.procs["upstream-camera"].stop(signal.SIGKILL)
    stack.upstream("camera", stack.upstream_ports["camera"])
    probe = asyncio.create_task(recovered(url, time.monotonic(), 10.0))
    outcomes = await load_.outcomes()
    record("upstream restart (SIGKILL)", await probe, outcomes)
    check(outcomes, "error")


async def test_redis_restart(stack: Stack, record):
    """Redis holds signaling state only: live sessions go on; after the restart (empty) a new
    viewer reaches the device again."""
    redis = RedisServer(stack.log_dir)
    redis.start()
    try:
        _, _, url = serve(stack, "--redis", redis.url)
        load_ = Transfers("transfers", url, stack.log_dir)
        load_.wait_in_flight()
        redis.stop()
        redis.start()
        since = time.monotonic()
        probe = asyncio.create_task(recovered(url, since, 10.0))
        outcomes = await load_.outcomes()
        seconds = await probe
        _, new_url = stack.client("camera")  # connects through the restarted Redis
        new_viewer = await recovered(new_url, since, 30.0)
    finally:
        redis.stop()
    record("redis restart", seconds, outcomes, new_viewer_s=new_viewer["recovery_s"])
    check(outcomes, "complete")


async def test_viewer_vanishes(stack: Stack, record):
    """SIGKILL of a native client mid-transfer: the daemon stops its upstream requests and
    keeps serving another viewer, whose transfers complete; the relaunched client serves."""
    daemon, victim, url = serve(stack)
    _, other_url = stack.client("camera")
    hit = Transfers("transfers-victim", url, stack.log_dir)
    bystander = Transfers("transfers-other", other_url, stack.log_dir)
    hit.wait_in_flight()
    bystander.wait_in_flight()
    victim.stop(signal.SIGKILL)
    killed = time.monotonic()
    check(await hit.outcomes(), "error")
    outcomes = await bystander.outcomes()
    check(outcomes, "complete")
    # The victim's downloads were cut at the upstream (499 in the daemon's access log).
    daemon.wait_for_log(r"camera GET /download\S* 499", timeout=30)
    freed = time.monotonic() - killed
    launched = time.monotonic()
    _, relaunched = stack.client("camera")
    record("viewer vanishes (SIGKILL of the native client)",
           await recovered(relaunched, launched, 30.0), outcomes,
           upstream_freed_within_s=round(freed, 2))


# ----- namespaces: netem, an address change


@pytest.fixture
def net(tmp_path: Path) -> Iterator[NetStack]:
    reason = unavailable_reason()
    if reason is not None:
        warnings.warn(f"namespace tests skipped: {reason}", stacklevel=2)
        pytest.skip(reason)
    network = Network(tmp_path).up()
    try:
        yield NetStack(network).services(coturn=False)
    finally:
        network.down()


def lan(net: NetStack) -> tuple[Proc, Proc, str, tuple[str, ...]]:
    """The daemon (the product's heartbeat timeout), a LAN viewer: (daemon, client, URL in
    the viewer's namespace, the command prefix that runs there)."""
    daemon = net.daemon(stun=None, turn=None, heartbeat_timeout=20.0)
    client, url = net.client("lanv", stun=None)
    return daemon, client, url, tuple(net.net.ns["lanv"].cmd())


@contextlib.contextmanager
def impaired(net: NetStack, delay: float, loss: float, reorder: float) -> Iterator[None]:
    """netem's model on every packet in and out of the device's LAN interface (so both
    directions): tests/support/impair.py on an NFQUEUE, as this kernel has no sch_netem."""
    proc = net.net.python("dev", "impair", "-m", "tests.support.impair", "0", str(delay),
                          str(loss), str(reorder))
    proc.wait_for_log("ready")
    dev = net.net.ns["dev"]
    rules = [("OUTPUT", "-o"), ("INPUT", "-i")]
    try:
        for chain, side in rules:
            dev.run("iptables", "-A", chain, side, "eth0", "-j", "NFQUEUE", "--queue-num", "0",
                    "--queue-bypass")
        yield
    finally:
        for chain, side in rules:
            dev.run("iptables", "-D", chain, side, "eth0", "-j", "NFQUEUE", "--queue-num", "0",
                    "--queue-bypass", check=False)
        proc.stop()  # lets what it holds through


@pytest.mark.netns
@pytest.mark.parametrize("delay,loss,reorder,expect", [
    pytest.param(0.1, 0.05, 0.0, "complete", id="loss5-delay100"),
    pytest.param(0.1, 0.20, 0.0, None, id="loss20-delay100"),
    pytest.param(0.02, 0.0, 0.01, "complete", id="reorder1"),
])
async def test_netem(net: NetStack, record, delay: float, loss: float, reorder: float,
                     expect: str | None):
    """Loss, delay or reordering, both directions, for NETEM_WINDOW seconds mid-transfer."""
    _, _, url, prefix = lan(net)
    load_ = Transfers("transfers", url, net.net.log_dir, prefix=prefix)
    load_.wait_in_flight()
    with impaired(net, delay, loss, reorder):
        await asyncio.sleep(NETEM_WINDOW)
    probe = asyncio.create_task(recovered(url, time.monotonic(), 30.0, prefix))
    outcomes = await load_.outcomes()
    fault = (f"{loss:.0%} loss, {delay * 1000:.0f} ms delay, {reorder:.0%} reordering each way"
             f" for {NETEM_WINDOW:g} s")
    record(fault, await probe, outcomes)
    check(outcomes, expect)


def renumber(net: NetStack) -> None:
    """The device's LAN address changes (DHCP renumbering): DEV goes, NEW_DEV comes."""
    dev = net.net.ns["dev"]
    dev.ip("addr", "del", f"{DEV}/24", "dev", "eth0")  # takes the default route with it
    dev.ip("addr", "add", f"{NEW_DEV}/24", "dev", "eth0")
    dev.ip("route", "add", "default", "via", "192.168.50.1")


@pytest.mark.netns
async def test_address_change_ice_restart(net: NetStack, record):
    """ICE restart on the live connection: the transfers in flight complete."""
    daemon, client, url, prefix = lan(net)
    load_ = Transfers("transfers", url, net.net.log_dir, duration=10.0, prefix=prefix)
    load_.wait_in_flight()
    renumber(net)
    probe = asyncio.create_task(recovered(url, time.monotonic(), 30.0, prefix))
    outcomes = await load_.outcomes()
    record("address change (ICE restart)", await probe, outcomes)
    check(outcomes, "complete")
    client.wait_for_log(r"ICE restart with \S+ done", timeout=10)
    assert client.log().count("connected to ") == 1  # the same peer connection


@pytest.mark.netns
async def test_address_change_ice_restart_fails_new_session(net: NetStack, record):
    """The ICE restart cannot complete (UDP between the device and the viewer is dropped while
    it tries): the viewer falls back to a new session by itself once the path is back."""
    daemon, client, url, prefix = lan(net)
    dev = net.net.ns["dev"]
    block = [("INPUT", "-s"), ("OUTPUT", "-d")]
    load_ = Transfers("transfers", url, net.net.log_dir, duration=10.0, prefix=prefix)
    load_.wait_in_flight()
    for chain, side in block:
        dev.run("iptables", "-I", chain, "-p", "udp", side, LAN_VIEWER, "-j", "DROP")
    renumber(net)
    client.wait_for_log(r"ICE restart (with \S+ )?failed", timeout=60)
    for chain, side in block:
        dev.run("iptables", "-D", chain, "-p", "udp", side, LAN_VIEWER, "-j", "DROP")
    probe = asyncio.create_task(recovered(url, time.monotonic(), 45.0, prefix))
    outcomes = await load_.outcomes()
    record("address change, ICE restart fails (new session)", await probe, outcomes)
    check(outcomes)
    client.wait_for_log(rf"connected to {net.device_id()}/camera", count=2, timeout=10)
    assert len(re.findall(r": answered \(", daemon.log())) == 2


# ----- Chromium vanishes


@pytest.mark.netns
async def test_chromium_vanishes(tmp_path: Path, record):
    """SIGKILL of Chromium mid-download: the daemon ends that viewer's upstream request within
    its heartbeat timeout and keeps serving a native client's transfers to completion; a
    relaunched browser opening the link is connected again."""
    from tests.browser.harness import (
        SERVICE,
        SIGNAL_PORT,
        Agent,
        BrowserWorld,
    )
    from tests.browser.harness import unavailable_reason as no_browser

    if reason := no_browser():
        pytest.skip(reason)
    world = BrowserWorld(tmp_path, services={SERVICE: 8081, "files": 8082})
    try:
        await asyncio.to_thread(world.up)
        world.start("files", "-m", "tests.support.upstream_app", "--port", "8082")
        client = world.start("client", "-m", "peerproxyd", "connect", world.links["viewer-files"],
                             "--signal", f"ws://127.0.0.1:{SIGNAL_PORT}/ws",
                             "--listen", "127.0.0.1:9000", "--host-address", "127.0.0.1")
        client.wait_for_log("is at http", timeout=40)
        url, prefix = "http://127.0.0.1:9000", ("ip", "netns", "exec", world.ns)
        await asyncio.to_thread(world.open, "/")
        assert world.agent is not None
        # A long download, read in the page and counted, never awaited by this call.
        world.agent.app.evaluate("""() => { window.got = 0; fetch('/download?size=500000000')
            .then(async r => { const reader = r.body.getReader();
                for (;;) { const {value, done} = await reader.read(); if (done) break;
                           window.got += value.length; } }); }""")
        world.agent.app.wait_for_function("() => window.got > 1000000", timeout=30_000)
        bystander = Transfers("transfers", url, tmp_path, prefix=prefix)
        bystander.wait_in_flight()
        os.kill(world.agent.chromium_pid, signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.to_thread(world.procs["daemon"].wait_for_log,
                                r"camera GET /download\?size=500000000 499", timeout=30)
        freed = time.monotonic() - killed
        outcomes = await bystander.outcomes()
        world.agent.quit()
        world.agent = await asyncio.to_thread(Agent, world.ns, tmp_path)
        opened = time.monotonic()
        await asyncio.to_thread(world.open, "/", timeout=30.0)
        again = {"recovery_s": round(time.monotonic() - opened, 2), "probe_started_s": 0.0}
        record("viewer vanishes (SIGKILL of Chromium)", again, outcomes,
               upstream_freed_within_s=round(freed, 2))
        check(outcomes, "complete")
    finally:
        await asyncio.to_thread(world.down)
