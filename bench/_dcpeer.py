"""One data-channel peer for bench/datachannel.py, driven by JSON lines: the daemon's or the
native client's own transport (peerproxyd.rtc.transport), on either backend.

    python -m bench._dcpeer offer|answer [--backend aiortc|native] [--speedups NAMES]

The peer is made as peerproxyd makes it: `aiortc_setup.configure_ice` (the daemon's and `connect`'s
process-wide ICE settings: candidates on 127.0.0.1 only, a 4 MiB UDP receive buffer, our
aioice fixes and aiortc speed-ups), then `transport.new_transport(ice, backend=...)`, driven
as peer.py (answerer: `on_channel`, `answer`, inside `transport.device_identity` with a device
identity) and client/native.py (offerer: `create_channel`, `offer`, `set_answer`) drive it, through
the DataChannel interface of peerproxyd.tunnel.channel (`send`, `bufferedAmount`,
`bufferedAmountLowThreshold`, `on("message"|"bufferedamountlow"|"open")`). uvloop, as `peerproxyd`
runs.

- `--backend aiortc` (transport_aiortc.AiortcTransport): `--speedups` is a comma-separated list
  of the aiortc speed-ups to keep (peerproxyd.rtc.aiortc_setup.SPEEDUPS; "all" for every one,
  "" or absent for none: stock aiortc, the only thing that differs between the bench's "stock"
  and "ours").
- `--backend native` (transport_native.NativeTransport, libdatachannel-py; Python >= 3.12):
  callbacks marshalled to the loop, polled receive in DRAIN_BATCH steps, the MAX_QUEUED guard
  and the close thread, exactly as the daemon runs them. `--speedups` is ignored.

Protocol (stdin -> peer, peer -> stdout), one JSON object per line:

    offerer  -> {"type": "offer", "sdp"}          answerer <- that line (or Chromium's offer)
    answerer -> {"type": "answer", "sdp"}         offerer  <- that line
    both     -> {"open": true, "ms": ...}         (the offerer creates the channel)
    receiver <- {"cmd": "recv", "bytes": N}   -> {"armed": true}
    sender   <- {"cmd": "send", "bytes": N}   -> {"sent": N, "seconds": ...}
    receiver                                  -> {"received": N, "seconds": ..., "messages": K}
    both     <- {"cmd": "quit"}

The sender sends N bytes in 16 KiB messages, each starting with its 8-byte sequence number,
pausing while bufferedAmount is above peerproxyd's HIGH_WATER until "bufferedamountlow"
(LOW_WATER) and yielding to the loop after each message (as ChannelStream does). The receiver
checks the sequence numbers and the total: any loss, duplicate or reordering is an error.

Development hooks: PP_DCPEER_PROFILE=PATH writes a cProfile of the whole run to PATH.<role>;
PP_DCPEER_DEBUG=SCRIPT runs SCRIPT's install() first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

from peerproxyd.tunnel.channel import HIGH_WATER, LOW_WATER

MESSAGE = 16 * 1024
TIMEOUT = 600.0


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Receiver:
    """The receiving end's checks: messages arrive numbered and in order, and exactly `expect`
    bytes in all; `done` resolves then, `error` says what broke."""

    def __init__(self) -> None:
        self.expect = 0
        self.received = 0
        self.messages = 0
        self.next_seq = 0
        self.done: asyncio.Future[None] | None = None
        self.error: str | None = None

    def on_message(self, message: bytes | str) -> None:
        if self.done is None or self.done.done():
            return
        seq = int.from_bytes(message[:8], "big") if isinstance(message, bytes) else -1
        if seq != self.next_seq and self.error is None:
            self.error = f"message {self.messages}: sequence {seq}, expected {self.next_seq}"
        self.next_seq += 1
        self.messages += 1
        self.received += len(message)
        if self.received >= self.expect:
            if self.received != self.expect and self.error is None:
                self.error = f"received {self.received} bytes, expected {self.expect}"
            self.done.set_result(None)


class Peer(Receiver):
    """Both ends of a transfer on one peerproxyd DataChannel (either backend's)."""

    def __init__(self) -> None:
        super().__init__()
        self.channel: Any = None
        self.opened = asyncio.Event()
        self.low = asyncio.Event()

    def attach(self, channel: Any) -> None:
        self.channel = channel
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("bufferedamountlow", self.low.set)
        channel.on("message", self.on_message)
        channel.on("open", self.opened.set)
        if channel.readyState == "open":
            self.opened.set()

    async def send(self, total: int) -> float:
        """As ChannelStream.write + ChannelLink.drain: wait above HIGH_WATER for
        "bufferedamountlow", one message per step, a yield after each."""
        block = bytearray(os.urandom(MESSAGE))
        channel = self.channel
        t0 = time.perf_counter()
        seq = 0
        left = total
        while left > 0:
            if channel.bufferedAmount > HIGH_WATER:
                self.low.clear()
                await asyncio.wait_for(self.low.wait(), 60)
            n = min(MESSAGE, left)
            block[:8] = seq.to_bytes(8, "big")
            channel.send(bytes(block[:n]))
            seq += 1
            left -= n
            await asyncio.sleep(0)
        return time.perf_counter() - t0


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def read_json(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    return dict(json.loads(line)) if line else {"cmd": "quit"}


async def run(role: str, backend: str, ice: Any) -> None:
    from peerproxyd.rtc.transport import CHANNEL_LABEL, device_identity, new_transport
    from peerproxyd.trust.identity import Identity

    reader = await stdin_reader()
    peer = Peer()
    # The daemon (answerer) runs in its identity's certificate context; `connect` does not.
    context = (device_identity(Identity.generate(), backend) if role == "answer"
               else contextlib.nullcontext())
    with context:
        transport = new_transport(ice, backend=backend)
        try:
            await _converse(role, transport, peer, reader, CHANNEL_LABEL)
        finally:
            await transport.close()


async def _converse(role: str, transport: Any, peer: Peer, reader: asyncio.StreamReader,
                    label: str) -> None:
    started = time.perf_counter()
    if role == "offer":
        peer.attach(transport.create_channel(label))
        emit({"type": "offer", "sdp": await transport.offer()})
        answer = await asyncio.wait_for(read_json(reader), 60)
        await transport.set_answer(answer["sdp"])
    else:
        transport.on_channel(peer.attach)
        offer = await asyncio.wait_for(read_json(reader), 60)
        started = time.perf_counter()
        emit({"type": "answer", "sdp": await transport.answer(offer["sdp"])})
    await asyncio.wait_for(peer.opened.wait(), 60)
    emit({"open": True, "ms": (time.perf_counter() - started) * 1000})
    loop = asyncio.get_running_loop()
    reports: set[asyncio.Task[None]] = set()
    while True:
        command = await read_json(reader)
        cmd = command.get("cmd")
        if cmd == "recv":
            peer.expect, peer.received, peer.messages, peer.next_seq = command["bytes"], 0, 0, 0
            peer.error = None
            peer.done = loop.create_future()
            emit({"armed": True})

            async def report(done: asyncio.Future[None] = peer.done) -> None:
                t0 = time.perf_counter()
                await asyncio.wait_for(done, TIMEOUT)
                emit({"received": peer.received, "messages": peer.messages,
                      "seconds": time.perf_counter() - t0, "error": peer.error})

            task = asyncio.ensure_future(report())
            reports.add(task)
            task.add_done_callback(reports.discard)
        elif cmd == "send":
            seconds = await peer.send(int(command["bytes"]))
            emit({"sent": command["bytes"], "seconds": seconds})
        else:
            break


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("offer", "answer"))
    parser.add_argument("--backend", choices=("aiortc", "native"), default="aiortc")
    parser.add_argument("--speedups", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from peerproxyd.config import IceSettings
    from peerproxyd.rtc import aiortc_setup

    ice = IceSettings(host_addresses=["127.0.0.1"], mdns=False)
    aiortc_setup.configure_ice(ice)  # as the daemon and `connect` do, whichever the backend
    names = [n for n in args.speedups.split(",") if n]
    if args.backend == "aiortc":
        aiortc_setup.install_speedups(list(aiortc_setup.SPEEDUPS) if names == ["all"] else names)
        print(f"aiortc backend, speed-ups: {names or 'none (stock aiortc)'}", file=sys.stderr,
              flush=True)
    else:
        print("native backend (peerproxyd.rtc.transport_native)", file=sys.stderr, flush=True)
    debug = os.environ.get("PP_DCPEER_DEBUG")
    if debug:
        import runpy

        runpy.run_path(debug)["install"]()
    profile = os.environ.get("PP_DCPEER_PROFILE")
    if profile:
        import cProfile

        with cProfile.Profile() as prof:
            _run_loop(args.role, args.backend, ice)
        prof.dump_stats(f"{profile}.{args.role}")
    else:
        _run_loop(args.role, args.backend, ice)


def _run_loop(role: str, backend: str, ice: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(role, backend, ice))
    else:
        uvloop.run(run(role, backend, ice))


if __name__ == "__main__":
    main()
