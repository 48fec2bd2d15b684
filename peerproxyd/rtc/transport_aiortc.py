"""The aiortc backend of peerproxyd.rtc.transport: aiortc's RTCPeerConnection as it was used
directly before issue 7 (aiortc_setup.py has its ICE settings, fixes and speed-ups).

The device certificate comes from `aiortc_certificate.device_certificate`, the context the
daemon runs in, so `identity` is not needed here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc import RTCDataChannel, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from peerproxyd.config import IceSettings
from peerproxyd.rtc import aiortc_ice_restart
from peerproxyd.rtc.aiortc_ice_restart import IceRestart
from peerproxyd.rtc.aiortc_setup import connection_report, new_peer_connection
from peerproxyd.rtc.report import ConnectionReport


class AiortcTransport:
    backend = "aiortc"
    restarts_ice = True

    def __init__(self, ice: IceSettings) -> None:
        self.pc = new_peer_connection(ice)

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    def on_state(self, callback: Callable[[str], None]) -> None:
        self.pc.on("connectionstatechange", lambda: callback(self.state))

    def on_channel(self, callback: Callable[[Any], None]) -> None:
        self.pc.on("datachannel", callback)

    def create_channel(self, label: str) -> RTCDataChannel:
        return self.pc.createDataChannel(label, ordered=True)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)

    async def set_answer(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def add_candidate(self, payload: dict[str, Any]) -> None:
        text = payload.get("candidate")
        if not text:
            return  # end-of-candidates
        candidate = candidate_from_sdp(str(text).removeprefix("candidate:"))
        candidate.sdpMid = payload.get("sdpMid")
        candidate.sdpMLineIndex = payload.get("sdpMLineIndex")
        await self.pc.addIceCandidate(candidate)

    async def report(self, *, measure_rtt: bool = True) -> ConnectionReport | None:
        return await connection_report(self.pc, measure_rtt=measure_rtt)

    async def close(self) -> None:
        await self.pc.close()

    async def restart_offer(self) -> tuple[str, IceRestart]:
        description, restart = await aiortc_ice_restart.offer_restart(self.pc)
        return str(description.sdp), restart

    async def finish_restart(self, restart: IceRestart, answer_sdp: str) -> bool:
        answer = RTCSessionDescription(sdp=answer_sdp, type="answer")
        return await aiortc_ice_restart.finish_restart(self.pc, restart, answer)

    async def restart_answer(self, offer_sdp: str) -> tuple[str, IceRestart]:
        offer = RTCSessionDescription(sdp=offer_sdp, type="offer")
        description, restart = await aiortc_ice_restart.answer_restart(self.pc, offer)
        return str(description.sdp), restart
