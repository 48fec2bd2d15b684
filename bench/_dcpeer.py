"""One bare aiortc data-channel peer for bench/datachannel.py, driven by JSON lines.

    python -m bench._dcpeer offer|answer [--speedups NAMES]

`--speedups` is a comma-separated list of peerproxyd's aiortc speed-ups to install
(peerproxyd.rtc.SPEEDUPS; "all" for every one, "" or absent for none: stock aiortc). Both
variants use what peerproxyd always applied before: candidates on 127.0.0.1 only, a 4 MiB UDP
receive buffer, uvloop when importable.

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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

from peerproxyd.channel import HIGH_WATER, LOW_WATER

MESSAGE = 16 * 1024
TIMEOUT = 600.0


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Receiver:
    """The receiving end's checks, shared by every bench peer: messages arrive numbered and in
    order, and exactly `expect` bytes in all; `done` resolves then, `error` says what broke."""

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
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.channel: Any = None
        self.opened = asyncio.Event()
        self.low = asyncio.Event()
        self.started = 0.0

    def attach(self, channel: Any) -> None:
        self.channel = channel
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("bufferedamountlow", self.low.set)
        channel.on("message", self.on_message)
        if channel.readyState == "open":
            self.opened.set()
        channel.on("open", self.opened.set)

    async def send(self, total: int) -> float:
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


async def run(role: str) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    reader = await stdin_reader()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peer = Peer(role)
    started = time.perf_counter()
    if role == "offer":
        peer.attach(pc.createDataChannel("bench", ordered=True))
        await pc.setLocalDescription(await pc.createOffer())
        emit({"type": "offer", "sdp": pc.localDescription.sdp})
        answer = await asyncio.wait_for(read_json(reader), 60)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    else:
        pc.on("datachannel", peer.attach)
        offer = await asyncio.wait_for(read_json(reader), 60)
        started = time.perf_counter()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        emit({"type": "answer", "sdp": pc.localDescription.sdp})
    await asyncio.wait_for(peer.opened.wait(), 60)
    emit({"open": True, "ms": (time.perf_counter() - started) * 1000})
    loop = asyncio.get_running_loop()
    try:
        while True:
            command = await read_json(reader)
            cmd = command.get("cmd")
            if cmd == "recv":
                peer.expect, peer.received, peer.messages, peer.next_seq = command["bytes"], 0, 0, 0
                peer.error = None
                peer.done = loop.create_future()
                emit({"armed": True})
                done = peer.done

                async def report(done: asyncio.Future[None] = done) -> None:
                    t0 = time.perf_counter()
                    await asyncio.wait_for(done, TIMEOUT)
                    emit({"received": peer.received, "messages": peer.messages,
                          "seconds": time.perf_counter() - t0, "error": peer.error})

                asyncio.ensure_future(report())
            elif cmd == "send":
                seconds = await peer.send(int(command["bytes"]))
                emit({"sent": command["bytes"], "seconds": seconds})
            else:
                break
    finally:
        await pc.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("offer", "answer"))
    parser.add_argument("--speedups", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from peerproxyd import aioice_tuning, rtc

    aioice_tuning.configure(host_addresses=["127.0.0.1"])
    names = [n for n in args.speedups.split(",") if n]
    rtc.install_speedups(list(rtc.SPEEDUPS) if names == ["all"] else names)
    debug = os.environ.get("PP_DCPEER_DEBUG")  # a script to run first, for development
    if debug:
        import runpy

        runpy.run_path(debug)["install"]()
    print(f"speedups: {names or 'none (stock aiortc)'}", file=sys.stderr, flush=True)
    profile = os.environ.get("PP_DCPEER_PROFILE")  # a cProfile output path, for development
    if profile:
        import cProfile

        with cProfile.Profile() as prof:
            _run_loop(args.role)
        prof.dump_stats(f"{profile}.{args.role}")
    else:
        _run_loop(args.role)


def _run_loop(role: str) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(role))
    else:
        uvloop.run(run(role))


if __name__ == "__main__":
    main()
