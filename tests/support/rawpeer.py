"""An in-process viewer built from the real parts (a peerproxyd.rtc.transport peer connection:
aiortc or native as procs.TEST_BACKEND says; SignalingClient, ChannelLink), with access to the
raw data channel so tests can send what a well-behaved client never would.

It is the viewer of a share link (tests.support.procs.share_link): it authenticates as the
native client does (docs/security.md 1.5) before any binary message."""

from __future__ import annotations

import asyncio
from typing import Any

from peerproxyd.config import IceSettings
from peerproxyd.errors import StreamResetError
from peerproxyd.protocol import (
    ErrorCode,
    Frame,
    ProxyConnection,
    RequestHead,
    ResponseHead,
    Role,
    parse_frame,
)
from peerproxyd.rtc.transport import CHANNEL_LABEL
from peerproxyd.rtc.patches import aioice_tuning
from peerproxyd.rtc.transport import choose_backend, new_transport
from peerproxyd.signaling.client import SignalingClient
from peerproxyd.trust.viewer_auth import (
    Granted,
    auth_mac,
    check_pinned,
    encode_auth,
    fingerprint_from_sdp,
    parse_auth_reply,
    parse_link,
)
from peerproxyd.tunnel.channel import ChannelLink, ChannelStream
from tests.support.procs import TEST_BACKEND

ICE = IceSettings(host_addresses=["127.0.0.1"])


class RawPeer:
    def __init__(self, signal_url: str, link: str, *, backend: str | None = None) -> None:
        """`backend`: the viewer's transport backend (default: PEERPROXYD_TEST_BACKEND's)."""
        self.signal_url = signal_url
        self.backend = backend or TEST_BACKEND
        self.messages: list[Any] = []  # every signaling message from the device
        self.offer = ""  # our SDP offer, and the device's answer
        self.answer = ""
        self.share = parse_link(link)
        self.device = self.share.device
        self.granted: Granted | None = None
        self.received: list[Frame] = []
        self.signaling = SignalingClient(signal_url, backoff_max=1.0)
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> RawPeer:
        aioice_tuning.configure(host_addresses=["127.0.0.1"])
        self._answer = asyncio.get_running_loop().create_future()

        async def on_message(msg: Any) -> None:
            self.messages.append(msg)
            if msg.type == "answer" and not self._answer.done():
                self._answer.set_result(msg.payload)

        self._tasks.append(asyncio.create_task(self.signaling.run(on_message)))
        self.pc = new_transport(ICE, backend=choose_backend(self.backend, ICE)[0])
        try:
            await self._connect()
        except BaseException:  # refused (AuthError), timed out...: leave nothing behind
            await self.__aexit__()
            raise
        return self

    async def _connect(self) -> None:
        await self.signaling.wait_connected(10)
        self.channel = self.pc.create_channel(CHANNEL_LABEL)
        opened = asyncio.Event()
        self.channel.on("open", opened.set)
        replies: asyncio.Queue[str] = asyncio.Queue()
        self.channel.on("message", self._record)
        self.channel.on("message", lambda m: isinstance(m, str) and replies.put_nowait(m))
        self.offer = offer = await self.pc.offer()
        await self.signaling.send("offer", self.device, {"sdp": offer, "type": "offer"})
        answer = await asyncio.wait_for(self._answer, 10)
        self.answer = answer["sdp"]
        check_pinned(answer["sdp"], self.share.fingerprint)
        await self.pc.set_answer(answer["sdp"])
        await asyncio.wait_for(opened.wait(), 10)
        viewer_fp = fingerprint_from_sdp(offer)
        mac = auth_mac(self.share.key, viewer_fp, self.share.fingerprint)
        self.channel.send(encode_auth(self.share.name, mac))
        self.granted = parse_auth_reply(await asyncio.wait_for(replies.get(), 10))
        # Binary messages before the ChannelLink exists are recorded, never parsed: the
        # daemon sends none before auth-ok, and the first heartbeat can wait.
        self.link = ChannelLink(self.channel, ProxyConnection(Role.CLIENT), name="rawpeer")

    async def __aexit__(self, *exc: object) -> None:
        if getattr(self, "link", None) is not None:
            self.link.close()
        await self.pc.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.signaling.close()

    def _record(self, message: bytes | str) -> None:
        if isinstance(message, str):
            return
        try:
            self.received.append(parse_frame(message))
        except Exception:
            pass

    def send_raw(self, data: bytes) -> None:
        self.channel.send(data)

    async def wait_for_frame(self, predicate: Any, timeout: float = 10.0) -> Frame:
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.received:
                    if predicate(frame):
                        return frame
                await asyncio.sleep(0.01)

    async def request(
        self, service: str, target: str = "/", *, method: str = "GET", body: bytes = b"",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> tuple[ResponseHead, bytes]:
        head = RequestHead(method=method, target=target, headers=headers, service=service)
        stream: ChannelStream = self.link.open_stream(head, end_stream=not body)
        upload = asyncio.create_task(self._upload(stream, body)) if body else None
        response, _ = await asyncio.wait_for(stream.response, 30)
        chunks = []
        while chunk := await stream.read():
            chunks.append(chunk)
        if upload is not None:
            await upload
        return response, b"".join(chunks)

    @staticmethod
    async def _upload(stream: ChannelStream, body: bytes) -> None:
        try:
            await stream.write(body, end=True)
        except StreamResetError as exc:
            if exc.code != ErrorCode.NO_ERROR:  # NO_ERROR: answered early, stop sending
                raise
