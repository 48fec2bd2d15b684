"""systemd integration against a real AF_UNIX datagram socket set as NOTIFY_SOCKET.

The daemon runs as a real process (signal handling is the CLI's), in front of a real
signaling server and upstream; viewers are in-process RawPeers. Every address is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerproxyd.appliance.notify import Notifier, _one_line
from peerproxyd.protocol import RequestHead
from peerproxyd.signaling.client import SignalingClient
from peerproxyd.signaling.messages import Message
from tests.support.procs import Proc, daemon_config, free_port, new_device, python, share_link
from tests.support.rawpeer import RawPeer
from tests.support.stack import Stack
from tests.support.upstream_app import pattern

MB = 1024 * 1024


class NotifySocket:
    """The systemd side of sd_notify: a bound datagram socket that records every message."""

    def __init__(self, address: str | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="ppd-notify-")  # short: sun_path is 108 bytes
        self.address = address or os.path.join(self._dir, "notify.sock")
        bind_to = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode("latin-1").splitlines())
            self.messages.append((time.monotonic(), fields))

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self.sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def with_key(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages)
                if key in m and (value is None or m[key] == value)]

    def wait_for(self, key: str, value: str | None = None, *, count: int = 1,
                 timeout: float = 20.0, status: str | None = None) -> dict[str, str]:
        """The `count`-th message with key (=value) and, if given, STATUS matching `status`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for _, m in self.with_key(key, value)
                     if status is None or re.search(status, m.get("STATUS", ""))]
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key}={value} (#{count}) in {self.messages}")
            time.sleep(0.02)

    def statuses(self) -> list[str]:
        return [m["STATUS"] for _, m in self.with_key("STATUS")]


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One signaling server and two upstreams shared by the tests; daemons are per test."""
    stack = Stack(tmp_path_factory.mktemp("notify"))
    try:
        stack.upstream("camera")
        stack.upstream("ha")
        stack.signal()
        yield stack
    finally:
        stack.stop()


def device_id(tmp_path: Path, name: str) -> str:
    """The device id of the daemon `start_daemon(..., device=name)` runs (made on first use)."""
    return new_device(tmp_path / f"{name}.state")


def viewer_link(tmp_path: Path, name: str, service: str = "camera") -> str:
    """The share link of a new viewer of `service` on the daemon `name`."""
    return share_link(tmp_path / f"{name}.state", service, f"viewer-{secrets.token_hex(4)}")


def start_daemon(stack: Stack, tmp_path: Path, notify: NotifySocket, *, device: str,
                 signal_port: int | None = None, services: dict[str, int] | None = None,
                 extra: str = "", env: dict[str, str] | None = None) -> tuple[Proc, Path]:
    """Start a daemon named `device` (its files and log); device_id() gives its id."""
    device_id(tmp_path, device)
    config = daemon_config(
        tmp_path / f"{device}.toml",
        state_dir=tmp_path / f"{device}.state",
        signal_port=signal_port or stack.signal_port,
        services=services or {"camera": stack.upstream_ports["camera"]},
    )
    if extra:
        with open(config, "a") as f:
            f.write(extra)
    proc = Proc(f"daemon-{device}", python("-m", "peerproxyd", "serve", "--config", str(config)),
                tmp_path, env={"NOTIFY_SOCKET": notify.address, **(env or {})})
    stack.procs[proc.name] = proc  # ended by PID with the stack if a test fails
    return proc, config


def wait_exit(proc: Proc, timeout: float) -> int:
    try:
        return proc.popen.wait(timeout)
    except Exception:
        raise AssertionError(f"{proc.name} still running after {timeout}s:\n{proc.log()[-3000:]}")


# ----- the Notifier on its own


def test_without_notify_socket_everything_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("y")
    notifier.reloading()
    notifier.stopping()
    notifier.ping()
    assert notifier.watchdog_interval is None

    async def main() -> None:
        async with asyncio.timeout(1):
            await notifier.watchdog(lambda: True)  # returns at once: nothing to do

    asyncio.run(main())


def test_messages_and_status_dedup(notify_socket: NotifySocket):
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.enabled
    notifier.ready("registered\nat  somewhere")
    notifier.status("registered at somewhere")  # same text: not resent
    notifier.status("peers → 2")  # not latin-1: replaced, still sent
    notifier.reloading()
    notifier.stopping("bye")
    notify_socket.wait_for("STOPPING", "1")
    kinds = [m for _, m in notify_socket.messages]
    assert kinds[0] == {"READY": "1", "STATUS": "registered at somewhere"}
    assert kinds[1] == {"STATUS": "peers ? 2"}
    assert kinds[2]["RELOADING"] == "1"
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < int(kinds[2]["MONOTONIC_USEC"]) <= now_usec
    assert kinds[3] == {"STOPPING": "1", "STATUS": "bye"}
    assert len(kinds) == 4
    assert len(_one_line("x" * 1000)) == 400


def test_abstract_socket_address():
    sock = NotifySocket(f"@ppd-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("NOTIFY_SOCKET", sock.address)  # sdnotify reads the environment
            Notifier({"NOTIFY_SOCKET": sock.address}).ready()
        assert sock.wait_for("READY", "1") == {"READY": "1"}
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_period_only_while_healthy(notify_socket: NotifySocket):
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "200000"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOTIFY_SOCKET", notify_socket.address)
        notifier = Notifier(env)
    assert notifier.watchdog_interval == pytest.approx(0.1)
    healthy = True

    async def main() -> None:
        nonlocal healthy
        task = asyncio.create_task(notifier.watchdog(lambda: healthy))
        await asyncio.sleep(0.55)
        healthy = False
        await asyncio.sleep(0.5)
        healthy = True
        await asyncio.sleep(0.35)
        task.cancel()

    start = time.monotonic()
    asyncio.run(main())
    pings = [t - start for t, _ in notify_socket.with_key("WATCHDOG", "1")]
    first = [t for t in pings if t < 0.55]
    gap = [t for t in pings if 0.65 < t < 1.05]
    last = [t for t in pings if t > 1.05]
    assert 5 <= len(first) <= 7, pings
    assert gap == [], pings
    assert 3 <= len(last) <= 5, pings


def test_watchdog_meant_for_another_pid_is_ignored():
    other = str(os.getpid() + 1)
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": other}).watchdog_interval is None
    mine = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": mine}).watchdog_interval == 0.5


# ----- the daemon under a fake systemd


def test_ready_after_registration_then_status_and_watchdog(stack, tmp_path, notify_socket):
    daemon, _ = start_daemon(stack, tmp_path, notify_socket, device="ready-pi",
                             env={"WATCHDOG_USEC": "1000000"})
    ready = notify_socket.wait_for("READY", "1")
    url = stack.signal_url
    ready_pi = device_id(tmp_path, "ready-pi")
    assert ready["STATUS"] == f"registered as {ready_pi} at {url}; peers 0, open streams 0"
    assert f"registered as {ready_pi}" in daemon.log()
    # WATCHDOG=1 every WATCHDOG_USEC/2 = 0.5 s while registered.
    first = notify_socket.wait_for("WATCHDOG", "1")
    assert first == {"WATCHDOG": "1"}
    time.sleep(2.6)
    pings = [t for t, _ in notify_socket.with_key("WATCHDOG", "1")]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 5, pings
    assert all(0.35 < g < 0.75 for g in gaps), gaps

    async def viewer() -> None:
        async with RawPeer(url, viewer_link(tmp_path, "ready-pi")) as peer:
            await asyncio.to_thread(
                notify_socket.wait_for, "STATUS", status=r"; peers 1, open streams 0$", timeout=5
            )
            head, body = await peer.request("camera", "/")
            assert (head.status, body) == (200, b"hello from camera\n")

    asyncio.run(viewer())
    notify_socket.wait_for("STATUS", status=r"; peers 0, open streams 0$", count=2, timeout=10)
    daemon.stop()
    assert daemon.popen.returncode == 0
    assert len(notify_socket.with_key("READY")) == 1


def test_ready_even_when_the_signaling_server_is_unreachable(stack, tmp_path, notify_socket):
    """Like ptproxy's wait_for_first_attempt: boot never hangs on the network. The watchdog
    keeps pinging while the daemon keeps retrying."""
    dead_port = free_port()
    daemon, _ = start_daemon(stack, tmp_path, notify_socket, device="lonely-pi",
                             signal_port=dead_port, env={"WATCHDOG_USEC": "600000"})
    started = time.monotonic()
    ready = notify_socket.wait_for("READY", "1", timeout=15)
    assert time.monotonic() - started < 10
    assert ready["STATUS"].startswith("signaling down (")
    assert f"retrying ws://127.0.0.1:{dead_port}/ws; peers 0, open streams 0" in ready["STATUS"]
    time.sleep(1.5)
    assert len(notify_socket.with_key("WATCHDOG", "1")) >= 3
    assert daemon.popen.poll() is None
    daemon.stop()


def test_sighup_reloads_services_without_dropping_peers(stack, tmp_path, notify_socket):
    ports = stack.upstream_ports
    daemon, config = start_daemon(stack, tmp_path, notify_socket, device="reload-pi")
    notify_socket.wait_for("READY", "1")

    async def scenario() -> None:
        async with RawPeer(stack.signal_url, viewer_link(tmp_path, "reload-pi", "ha")) as peer:
            head, _ = await peer.request("ha", "/")
            assert head.status == 404  # not configured yet
            config.write_text(config.read_text() + (
                f'[services.ha]\nupstream = "http://127.0.0.1:{ports["ha"]}"\n'
            ))
            os.kill(daemon.pid, signal.SIGHUP)
            reloading = await asyncio.to_thread(notify_socket.wait_for, "RELOADING", "1")
            assert int(reloading["MONOTONIC_USEC"]) > 0
            await asyncio.to_thread(notify_socket.wait_for, "READY", "1", count=2)
            # The same peer, never disconnected, reaches the new service ...
            head, body = await peer.request("ha", "/")
            assert (head.status, body) == (200, b"hello from ha\n")
            head, _ = await peer.request("camera", "/")
            assert head.status == 403  # a viewer of ha only
            # ... and a broken file changes nothing but the status line.
            config.write_text(config.read_text() + "[services.bad]\nupstream = 'ftp://x'\n")
            os.kill(daemon.pid, signal.SIGHUP)
            ready = await asyncio.to_thread(notify_socket.wait_for, "READY", "1", count=3)
            assert "reload failed: services.bad.upstream: URL scheme should be" in ready["STATUS"]
            head, body = await peer.request("ha", "/")
            assert (head.status, body) == (200, b"hello from ha\n")
            log = daemon.log()
            assert "reloaded: services camera, ha (added: ha; removed: -; changed: -); " \
                "1 peers kept" in log
            assert "reload: services.bad.upstream: URL scheme should be" in log
            assert ": closing" not in log, "no peer may be dropped by a reload"

    asyncio.run(scenario())
    assert len(notify_socket.with_key("RELOADING", "1")) == 2
    daemon.stop()


async def offer_reply(signal_url: str, device: str) -> Message:
    """What the device answers a new viewer's offer."""
    client = SignalingClient(signal_url)
    reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    async def on_message(message: Message) -> None:
        if message.from_ == device and not reply.done():
            reply.set_result(message)

    task = asyncio.create_task(client.run(on_message))
    try:
        await client.wait_connected(10)
        await client.send("offer", device, {"sdp": "v=0", "type": "offer"})
        return await asyncio.wait_for(reply, 10)
    finally:
        await client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _start_download(peer: RawPeer, size: int):
    stream = peer.link.open_stream(
        RequestHead(method="GET", target=f"/download?size={size}", headers=(), service="camera"),
        end_stream=True,
    )
    head, _ = await asyncio.wait_for(stream.response, 10)
    assert head.status == 200
    return stream


async def _read_some(stream, digest, limit: int) -> int:
    got = 0
    while got < limit:
        chunk = await stream.read()
        assert chunk, "stream ended early"
        digest.update(chunk)
        got += len(chunk)
    return got


def test_sigterm_sends_stopping_and_drains_an_in_flight_20_mb_download(
    stack, tmp_path, notify_socket
):
    daemon, _ = start_daemon(stack, tmp_path, notify_socket, device="drain-pi",
                             extra="[daemon]\ndrain_timeout = 30\n")
    notify_socket.wait_for("READY", "1")
    size = 20 * MB

    async def scenario() -> None:
        async with RawPeer(stack.signal_url, viewer_link(tmp_path, "drain-pi")) as peer:
            stream = await _start_download(peer, size)
            digest = hashlib.sha256()
            received = await _read_some(stream, digest, MB)
            os.kill(daemon.pid, signal.SIGTERM)
            stopping = await asyncio.to_thread(notify_socket.wait_for, "STOPPING", "1")
            assert stopping["STATUS"].startswith("stopping: draining 1 open requests")
            # New requests are refused while the old one drains ...
            head, body = await peer.request("camera", "/")
            assert (head.status, body) == (503, b"device is shutting down\n")
            assert dict(head.headers)["X-Peerproxy-Error"] == "1"
            # ... and a new viewer is turned away.
            reply = await offer_reply(stack.signal_url, device_id(tmp_path, "drain-pi"))
            assert (reply.type, reply.payload) == ("bye", {"reason": "device is shutting down"})
            assert daemon.popen.poll() is None, "the daemon must wait for the download"
            while chunk := await stream.read():
                digest.update(chunk)
                received += len(chunk)
            assert received == size
            assert digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()

    asyncio.run(scenario())
    assert wait_exit(daemon, 15) == 0
    log = daemon.log()
    assert "SIGTERM: stopping" in log
    assert "drained: no open requests left" in log
    assert "camera GET /download?size=20971520 200 20971520B" in log


def test_second_signal_stops_at_once_and_drain_timeout_is_kept(stack, tmp_path, notify_socket):
    # drain_timeout: a held download is cut after 1 s.
    daemon, _ = start_daemon(stack, tmp_path, notify_socket, device="timeout-pi",
                             extra="[daemon]\ndrain_timeout = 1.0\n")
    notify_socket.wait_for("READY", "1")

    async def held_download(proc: Proc, sigs: list[int]) -> float:
        async with RawPeer(stack.signal_url,
                           viewer_link(tmp_path, proc.name.removeprefix("daemon-"))) as peer:
            stream = await _start_download(peer, 50 * MB)
            await _read_some(stream, hashlib.sha256(), MB)  # then stop reading: held open
            started = time.monotonic()
            for sig in sigs:
                os.kill(proc.pid, sig)
                await asyncio.to_thread(notify_socket.wait_for, "STOPPING", "1")
            await asyncio.to_thread(proc.popen.wait, 20)
            return time.monotonic() - started

    took = asyncio.run(held_download(daemon, [signal.SIGTERM]))
    assert 0.9 < took < 20, took  # cut at ~1 s, not held for the whole download
    assert daemon.popen.returncode == 0
    assert "drain timeout (1.0 s): closing 1 open requests" in daemon.log()

    # A second SIGTERM (or SIGINT) does not wait out a 60 s drain.
    notify_socket.messages.clear()
    daemon, _ = start_daemon(stack, tmp_path, notify_socket, device="hurry-pi",
                             extra="[daemon]\ndrain_timeout = 60\n")
    notify_socket.wait_for("READY", "1")
    took = asyncio.run(held_download(daemon, [signal.SIGTERM, signal.SIGINT]))
    assert took < 20, took  # far below the 60 s drain_timeout
    assert "SIGINT again: stopping at once" in daemon.log()


def test_health_file_for_containers(tmp_path: Path):
    """No systemd in a container: the same events keep PEERPROXYD_HEALTH_FILE current."""
    health = tmp_path / "health"
    notifier = Notifier({"PEERPROXYD_HEALTH_FILE": str(health)})
    assert notifier.enabled
    notifier.status("connecting")
    assert not health.exists(), "not before READY"
    notifier.ready("registered; peers 0")
    assert health.read_text() == "registered; peers 0\n"
    notifier.status("registered; peers 1")
    assert health.read_text() == "registered; peers 1\n"
    os.utime(health, (0, 0))
    healthy = True

    async def main() -> None:
        nonlocal healthy
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("peerproxyd.appliance.notify.HEALTH_INTERVAL", 0.05)
            task = asyncio.create_task(notifier.watchdog(lambda: healthy))
            await asyncio.sleep(0.12)
            assert health.stat().st_mtime > time.time() - 5  # refreshed while healthy
            healthy = False
            await asyncio.sleep(0.06)
            os.utime(health, (0, 0))
            await asyncio.sleep(0.15)
            assert health.stat().st_mtime == 0  # left to age while unhealthy
            task.cancel()

    asyncio.run(main())
    notifier.stopping("stopping")
    assert not health.exists()
