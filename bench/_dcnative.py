"""One bare libdatachannel-py data-channel peer for bench/datachannel.py (issue 7).

    python3.13 -m bench._dcnative offer|answer

Speaks the JSON-lines protocol of bench/_dcpeer.py (see there), with the same sender
(16 KiB sequence-numbered messages, peerproxyd's HIGH_WATER / LOW_WATER backpressure, a
yield after each message) and receiver checks, so it pairs with an aiortc peer, Chromium or
itself. libdatachannel runs its ICE, DTLS and SCTP on its own C threads; its callbacks are
handed to the asyncio loop with call_soon_threadsafe, and received messages are polled
(`on_available` + `receive()`) on the loop, as peerproxyd's native backend does. Candidates:
127.0.0.1 only (`bind_address`), no ICE servers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any

from bench._dcpeer import MESSAGE, TIMEOUT, Receiver, emit, read_json, stdin_reader
from peerproxyd.channel import HIGH_WATER, LOW_WATER


class NativePeer(Receiver):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.channel: Any = None
        self.opened = asyncio.Event()
        self.low = asyncio.Event()
        self.gathered = asyncio.Event()
        self._draining = False

    def attach(self, channel: Any) -> None:
        self.channel = channel
        channel.set_buffered_amount_low_threshold(LOW_WATER)
        call = self.loop.call_soon_threadsafe
        channel.on_buffered_amount_low(lambda: call(self.low.set))
        channel.on_available(lambda *_: call(self.drain))
        channel.on_open(lambda: call(self.opened.set))
        if channel.is_open():
            call(self.opened.set)

    def drain(self) -> None:
        channel = self.channel
        while (message := channel.receive()) is not None:
            self.on_message(message)

    async def send(self, total: int) -> float:
        block = bytearray(os.urandom(MESSAGE))
        channel = self.channel
        t0 = time.perf_counter()
        seq = 0
        left = total
        while left > 0:
            if channel.buffered_amount() > HIGH_WATER:
                self.low.clear()
                if channel.buffered_amount() > HIGH_WATER:
                    await asyncio.wait_for(self.low.wait(), 60)
            n = min(MESSAGE, left)
            block[:8] = seq.to_bytes(8, "big")
            channel.send(bytes(block[:n]))
            seq += 1
            left -= n
            await asyncio.sleep(0)
        return time.perf_counter() - t0


def new_pc() -> Any:
    import libdatachannel as rtc

    config = rtc.Configuration()
    config.ice_servers = []
    config.bind_address = "127.0.0.1"
    config.disable_auto_negotiation = True
    return rtc.PeerConnection(config)


async def local_sdp(pc: Any, peer: NativePeer, kind: Any) -> str:
    import libdatachannel as rtc

    call = peer.loop.call_soon_threadsafe
    pc.on_gathering_state_change(
        lambda state: state == rtc.PeerConnection.GatheringState.Complete
        and call(peer.gathered.set))
    pc.set_local_description(kind)
    await asyncio.wait_for(peer.gathered.wait(), 30)
    return str(pc.local_description())


async def run(role: str) -> None:
    import libdatachannel as rtc

    reader = await stdin_reader()
    loop = asyncio.get_running_loop()
    peer = NativePeer(loop)
    pc = new_pc()
    started = time.perf_counter()
    if role == "offer":
        peer.attach(pc.create_data_channel("bench"))
        emit({"type": "offer", "sdp": await local_sdp(pc, peer, rtc.Description.Type.Offer)})
        answer = await asyncio.wait_for(read_json(reader), 60)
        pc.set_remote_description(rtc.Description(answer["sdp"], "answer"))
    else:
        pc.on_data_channel(lambda ch: loop.call_soon_threadsafe(peer.attach, ch))
        offer = await asyncio.wait_for(read_json(reader), 60)
        started = time.perf_counter()
        pc.set_remote_description(rtc.Description(offer["sdp"], "offer"))
        emit({"type": "answer",
              "sdp": await local_sdp(pc, peer, rtc.Description.Type.Answer)})
    await asyncio.wait_for(peer.opened.wait(), 60)
    emit({"open": True, "ms": (time.perf_counter() - started) * 1000})
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
                peer.drain()

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
        pc.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("offer", "answer"))
    parser.add_argument("--speedups", default="")  # accepted for _dcpeer compatibility
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print("libdatachannel-py peer", file=sys.stderr, flush=True)
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args.role))
    else:
        uvloop.run(run(args.role))


if __name__ == "__main__":
    main()
