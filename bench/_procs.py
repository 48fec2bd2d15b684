"""Processes for bench/core.py: the peerproxyd stack and a pair of bare aiortc peers.

Everything listens on and sends to 127.0.0.1 only; every child is started here and ended by
its PID. Run as `python -m bench._procs rawpeer offer|answer [--burst]` from the repository
root, this module is one bare aiortc peer, driven by JSON lines on stdin/stdout:

    offerer  -> {"sdp", "type": "offer"}         answerer <- that line
    answerer -> {"sdp", "type": "answer"}        offerer  <- that line
    offerer  -> {"open_ms": ...}                 (data channel open)
    offerer  <- {"cmd": "get", "size": N, "count": K, "budget": S}
    offerer  -> {"latencies": [seconds, ...]}
    both     <- {"cmd": "quit"}

"get" is the bare-channel analogue of an HTTP GET: the offerer sends the size as ASCII digits
(a 1-byte message for size 1, so size 1 is a 1-byte ping-pong) and the answerer replies with
`size` bytes in 16 KiB messages, pausing while bufferedAmount is above HIGH_WATER until
"bufferedamountlow" (LOW_WATER), the same thresholds peerproxyd's ChannelLink uses, and
yielding to the event loop after each message (the faster way to drive aiortc: see
`_answerer` and bench/README.md; `--burst` queues without yielding).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from peerproxyd.tunnel.channel import HIGH_WATER, LOW_WATER  # noqa: E402
from tests.support.procs import (  # noqa: E402
    Proc,
    free_port,
    new_device,
    python,
    share_link,
    wait_http,
)

MESSAGE = 16 * 1024
SERVICE = "bench"


# ----------------------------------------------------------------------------- the stack
class ProxyStack:
    """Upstream app, signaling server, daemon and `peerproxyd connect`, as real processes."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, Proc] = {}
        self.upstream_url = ""
        self.proxy_url = ""
        self.setup_ms: float | None = None
        self._signal_url = ""
        self._state_dir = log_dir

    def _start(self, name: str, args: list[str]) -> Proc:
        proc = Proc(name, args, self.log_dir)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        port = free_port()
        self._start(
            "upstream",
            python("-m", "tests.support.upstream_app", "--port", str(port), "--name", SERVICE),
        )
        self.upstream_url = f"http://127.0.0.1:{port}"
        wait_http(self.upstream_url + "/")

        signal_port = free_port()
        self._start("signal", python("-m", "peerproxyd", "signal", "--port", str(signal_port)))
        wait_http(f"http://127.0.0.1:{signal_port}/healthz")

        # Defaults everywhere except what loopback needs: a deployment-like daemon.
        state_dir = self.log_dir / "device-state"
        new_device(state_dir)
        config = self.log_dir / "daemon.toml"
        config.write_text(
            "\n".join(
                [
                    "[device]",
                    f'state_dir = "{state_dir}"',
                    "[signaling]",
                    f'url = "ws://127.0.0.1:{signal_port}/ws"',
                    "[ice]",
                    'host_addresses = ["127.0.0.1"]',
                    "mdns = false",  # no DNS-SD advertisement, no .local names: loopback only
                    f"[services.{SERVICE}]",
                    f'upstream = "{self.upstream_url}"',
                ]
            )
            + "\n"
        )
        daemon = self._start("daemon", python("-m", "peerproxyd", "serve", "--config", str(config)))
        daemon.wait_for_log("registered as")

        self._signal_url = f"ws://127.0.0.1:{signal_port}/ws"
        self._state_dir = state_dir
        self.proxy_url = self.add_viewer("bench", proc_name="connect")

    def add_viewer(self, name: str, *, proc_name: str | None = None) -> str:
        """One more viewer: its own `peerproxyd connect` (own peer connection); its URL."""
        listen = free_port()
        client = self._start(
            proc_name or f"connect-{name}",
            python(
                "-m", "peerproxyd", "connect",
                share_link(self._state_dir, SERVICE, name),
                "--signal", self._signal_url,
                "--listen", f"127.0.0.1:{listen}", "--host-address", "127.0.0.1",
            ),
        )
        client.wait_for_log("is at http")
        match = client.wait_for_log(r"data channel open in (\d+) ms")
        if self.setup_ms is None:
            self.setup_ms = float(match.group(1))
        return f"http://127.0.0.1:{listen}"

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()


class RawPair:
    """Two bare aiortc peers in two processes; the offerer is the requester."""

    def __init__(self, log_dir: Path, *, burst: bool = False) -> None:
        self.log_dir = log_dir
        self.burst = burst  # the answerer queues up to HIGH_WATER without yielding
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self._logs: list[Any] = []
        self.setup_ms: float | None = None

    async def _spawn(self, role: str) -> asyncio.subprocess.Process:
        log = open(self.log_dir / f"rawpeer-{role}.log", "ab")
        self._logs.append(log)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._procs", "rawpeer", role,
            *(["--burst"] if self.burst else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            limit=16 * 1024 * 1024,
        )
        self.procs[role] = proc
        return proc

    @staticmethod
    async def _read(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"rawpeer {proc.pid} exited (see its log)")
        return dict(json.loads(line))

    @staticmethod
    async def _write(proc: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(message).encode() + b"\n")
        await proc.stdin.drain()

    async def start(self) -> None:
        offerer = await self._spawn("offer")
        answerer = await self._spawn("answer")
        await self._write(answerer, await self._read(offerer, 20))
        await self._write(offerer, await self._read(answerer, 20))
        self.setup_ms = float((await self._read(offerer, 20))["open_ms"])

    async def get(self, size: int, count: int, budget: float, timeout: float) -> list[float]:
        offerer = self.procs["offer"]
        await self._write(offerer, {"cmd": "get", "size": size, "count": count, "budget": budget})
        return [float(x) for x in (await self._read(offerer, timeout))["latencies"]]

    def pids(self) -> dict[str, int]:
        return {f"rawpeer-{role}": p.pid for role, p in self.procs.items()}

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                try:
                    await self._write(proc, {"cmd": "quit"})
                except (ConnectionError, RuntimeError):
                    pass
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()  # this PID only
                await proc.wait()
        for log in self._logs:
            log.close()


# ----------------------------------------------------------------------------- the child
async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _read_json(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        return {"cmd": "quit"}
    return dict(json.loads(line))


async def _offerer() -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    reader = await _stdin_reader()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("bench", ordered=True)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    expected = 0
    received = 0
    done: asyncio.Future[None] | None = None

    def on_message(message: bytes | str) -> None:
        nonlocal received
        received += len(message)
        if received >= expected and done is not None and not done.done():
            done.set_result(None)

    channel.on("message", on_message)
    started = time.perf_counter()
    await pc.setLocalDescription(await pc.createOffer())
    _emit({"sdp": pc.localDescription.sdp, "type": "offer"})
    answer = await asyncio.wait_for(_read_json(reader), 20)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    await asyncio.wait_for(opened.wait(), 20)
    _emit({"open_ms": (time.perf_counter() - started) * 1000})
    loop = asyncio.get_running_loop()
    try:
        while True:
            command = await _read_json(reader)
            if command.get("cmd") != "get":
                break
            size, count = int(command["size"]), int(command["count"])
            budget = float(command["budget"])
            request = str(size).encode()
            latencies: list[float] = []
            began = time.perf_counter()
            for _ in range(count):
                expected, received = size, 0
                done = loop.create_future()
                t0 = time.perf_counter()
                channel.send(request)
                await asyncio.wait_for(done, 300)
                latencies.append(time.perf_counter() - t0)
                if received != size:
                    raise RuntimeError(f"got {received} bytes for a {size}-byte request")
                if time.perf_counter() - began > budget:
                    break
            _emit({"latencies": latencies})
    finally:
        await pc.close()


class _GetServer:
    """The answerer's half of "get": each request (a size, as digits) is answered with that
    many bytes in MESSAGE-size messages, pausing while bufferedAmount is above HIGH_WATER until
    "bufferedamountlow" (LOW_WATER), as peerproxyd's ChannelLink does."""

    def __init__(self, *, burst: bool) -> None:
        self.requests: asyncio.Queue[int] = asyncio.Queue()
        self.block = os.urandom(MESSAGE)
        self.low = asyncio.Event()
        self.channels: list[Any] = []
        self.burst = burst

    def on_channel(self, channel: Any) -> None:
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("bufferedamountlow", self.low.set)
        channel.on("message", lambda m: self.requests.put_nowait(int(m)))
        self.channels.append(channel)

    async def serve(self) -> None:
        while True:
            remaining = await self.requests.get()
            channel = self.channels[0]
            while remaining > 0:
                if channel.bufferedAmount > HIGH_WATER:
                    self.low.clear()
                    await asyncio.wait_for(self.low.wait(), 60)
                n = min(MESSAGE, remaining)
                channel.send(self.block if n == MESSAGE else self.block[:n])
                remaining -= n
                # Let aiortc hand the message to SCTP before queueing the next: a sender that
                # queues up to HIGH_WATER in one go keeps ~2x more chunks in flight, and
                # aiortc's per-SACK work grows with that (RTCSctpTransport._transmit walks
                # the whole sent queue): ~40 % less throughput on loopback. See README.md.
                if not self.burst:
                    await asyncio.sleep(0)

    async def run_until_quit(self, reader: asyncio.StreamReader) -> None:
        server = asyncio.create_task(self.serve())
        try:
            while (await _read_json(reader)).get("cmd") != "quit":
                pass
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)


async def _answerer(burst: bool) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    reader = await _stdin_reader()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    gets = _GetServer(burst=burst)
    pc.on("datachannel", gets.on_channel)
    offer = await asyncio.wait_for(_read_json(reader), 20)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
    await pc.setLocalDescription(await pc.createAnswer())
    _emit({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
    try:
        await gets.run_until_quit(reader)
    finally:
        await pc.close()


def _rawpeer(role: str, burst: bool) -> None:
    import logging

    from peerproxyd.rtc.patches import aioice_tuning

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Same ICE tuning as peerproxyd: candidates on 127.0.0.1 only, 4 MiB UDP receive buffer.
    aioice_tuning.configure(host_addresses=["127.0.0.1"])
    main = _offerer() if role == "offer" else _answerer(burst)
    try:
        import uvloop  # the peerproxyd CLI uses uvloop when importable: so do we
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


# ----------------------------------------------------------------------------- for bench/loss.py
class PrefixedRawPair(RawPair):
    """RawPair whose peers are `prefix + [python, *child, role]` (e.g. `ip netns exec NS` and
    bench/loss.py's `rawpeer` mode, which runs `rawpeer_as_daemon`)."""

    def __init__(self, log_dir: Path, prefix: list[str], child: list[str]) -> None:
        super().__init__(log_dir)
        self.prefix = prefix
        self.child = child

    async def _spawn(self, role: str) -> asyncio.subprocess.Process:
        log = open(self.log_dir / f"rawpeer-{role}.log", "ab")
        self._logs.append(log)
        proc = await asyncio.create_subprocess_exec(
            *self.prefix, sys.executable, *self.child, role,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            limit=16 * 1024 * 1024,
        )
        self.procs[role] = proc
        return proc


def rawpeer_as_daemon(role: str) -> None:
    """One bare peer of the "get" protocol above, with the process-wide settings the daemon and
    `connect` apply (aiortc_setup.configure_ice: our aioice fixes and every aiortc speed-up,
    candidates on 127.0.0.1): the raw data channel on the daemon's own aiortc."""
    import logging

    from peerproxyd.config import IceSettings
    from peerproxyd.rtc.aiortc_setup import configure_ice

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    configure_ice(IceSettings(host_addresses=["127.0.0.1"], mdns=False))
    main = _offerer() if role == "offer" else _answerer(burst=False)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)



def transport_rawpeer(role: str, backend: str) -> None:
    """One peer of the "get" protocol above on peerproxyd's own transport
    (peerproxyd.rtc.transport, `backend` "aiortc" or "native"), made as bench/_dcpeer.py makes
    it: configure_ice, the device identity on the answerer, the product's channel label."""
    import logging

    from peerproxyd.config import IceSettings
    from peerproxyd.rtc.transport import configure_ice

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    ice = IceSettings(host_addresses=["127.0.0.1"], mdns=False)
    configure_ice(ice, backend)  # type: ignore[arg-type]
    main = _transport_peer(role, backend, ice)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _transport_peer(role: str, backend: str, ice: Any) -> None:
    import contextlib

    from peerproxyd.rtc.transport import CHANNEL_LABEL, device_identity, new_transport
    from peerproxyd.trust.identity import Identity

    reader = await _stdin_reader()
    context = (device_identity(Identity.generate(), backend)  # type: ignore[arg-type]
               if role == "answer" else contextlib.nullcontext())
    with context:
        transport = new_transport(ice, backend=backend)  # type: ignore[arg-type]
        try:
            if role == "offer":
                await _transport_offerer(transport, reader, CHANNEL_LABEL)
            else:
                await _transport_answerer(transport, reader)
        finally:
            await transport.close()


async def _transport_offerer(transport: Any, reader: asyncio.StreamReader, label: str) -> None:
    """As `_offerer`, on a peerproxyd transport's channel."""
    channel = transport.create_channel(label)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    state: dict[str, Any] = {"expected": 0, "received": 0, "done": None}

    def on_message(message: bytes | str) -> None:
        state["received"] += len(message)
        done = state["done"]
        if state["received"] >= state["expected"] and done is not None and not done.done():
            done.set_result(None)

    channel.on("message", on_message)
    started = time.perf_counter()
    _emit({"sdp": await transport.offer(), "type": "offer"})
    answer = await asyncio.wait_for(_read_json(reader), 20)
    await transport.set_answer(answer["sdp"])
    if channel.readyState != "open":
        await asyncio.wait_for(opened.wait(), 20)
    _emit({"open_ms": (time.perf_counter() - started) * 1000})
    loop = asyncio.get_running_loop()
    while True:
        command = await _read_json(reader)
        if command.get("cmd") != "get":
            break
        size, count, budget = int(command["size"]), int(command["count"]), command["budget"]
        latencies: list[float] = []
        began = time.perf_counter()
        for _ in range(count):
            state.update(expected=size, received=0, done=loop.create_future())
            t0 = time.perf_counter()
            channel.send(str(size).encode())
            await asyncio.wait_for(state["done"], 300)
            latencies.append(time.perf_counter() - t0)
            if state["received"] != size:
                raise RuntimeError(f"got {state['received']} bytes for a {size}-byte request")
            if time.perf_counter() - began > float(budget):
                break
        _emit({"latencies": latencies})


async def _transport_answerer(transport: Any, reader: asyncio.StreamReader) -> None:
    """As `_answerer` (a yield after each message), on a peerproxyd transport's channel."""
    gets = _GetServer(burst=False)
    transport.on_channel(gets.on_channel)
    offer = await asyncio.wait_for(_read_json(reader), 20)
    _emit({"sdp": await transport.answer(offer["sdp"]), "type": "answer"})
    await gets.run_until_quit(reader)


if __name__ == "__main__":
    args = sys.argv[1:]
    role_ok = args[1:2] in (["offer"], ["answer"])
    if args[:1] != ["rawpeer"] or not role_ok or args[2:] not in ([], ["--burst"]):
        raise SystemExit("usage: python -m bench._procs rawpeer offer|answer [--burst]")
    _rawpeer(args[1], burst=args[2:] == ["--burst"])
