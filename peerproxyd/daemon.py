"""Daemon: keeps the device registered with the signaling server and answers viewers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from peerproxyd.config import Settings
from peerproxyd.peer import PeerSession
from peerproxyd.router import Router, new_upstream_session
from peerproxyd.rtc import configure_ice
from peerproxyd.signaling import SignalingClient
from peerproxyd.signaling_messages import Message

logger = logging.getLogger(__name__)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: dict[str, PeerSession] = {}
        self.signaling = SignalingClient(
            settings.signaling.url,
            device_id=settings.device.id,
            secret=settings.device.secret.get_secret_value(),
            backoff_min=settings.signaling.reconnect_min,
            backoff_max=settings.signaling.reconnect_max,
        )
        self._router: Router | None = None
        self.registered = asyncio.Event()

    async def run(self) -> None:
        """Serve until cancelled."""
        configure_ice(self.settings.ice)
        names = ", ".join(f"{n} -> {s.upstream}" for n, s in self.settings.services.items())
        logger.info("device %s serving %s", self.settings.device.id, names)
        async with new_upstream_session() as http:
            self._router = Router(self.settings.services, http)
            try:
                await self.signaling.run(self._on_message, self._on_signaling_state)
            finally:
                await self.close_sessions()
                await self.signaling.close()

    def _on_signaling_state(self, connected: bool) -> None:
        if connected:
            logger.info("registered as %s at %s", self.settings.device.id, self.settings.signaling.url)
            self.registered.set()
        else:
            self.registered.clear()
            logger.warning("signaling link down: %s", self.signaling.last_error)

    async def _on_message(self, message: Message) -> None:
        peer = message.from_
        payload: dict[str, Any] = message.payload or {}
        if message.type == "offer" and peer:
            await self._on_offer(peer, payload)
        elif message.type == "candidate" and peer:
            if session := self.sessions.get(peer):
                try:
                    await session.add_candidate(payload)
                except Exception as exc:  # a bad candidate from a viewer
                    logger.warning("%r: ignoring candidate: %s", session, exc)
        elif message.type == "bye" and peer:
            if session := self.sessions.get(peer):
                await session.close()
        elif message.type == "error":
            logger.warning("signaling error %s: %s", message.get("code"), message.get("message"))

    async def _on_offer(self, peer: str, offer: dict[str, Any]) -> None:
        if old := self.sessions.get(peer):
            await old.close()  # the viewer restarted its connection
        max_peers = self.settings.limits.max_peers
        if len(self.sessions) >= max_peers:
            logger.warning("refusing %s: already serving %d peers", peer, max_peers)
            await self.signaling.send(
                "bye", peer, {"reason": f"busy: this device serves at most {max_peers} viewers"}
            )
            return
        assert self._router is not None
        session = PeerSession(peer, self.settings, self._router, self._forget)
        self.sessions[peer] = session
        try:
            answer = await session.accept(offer)
        except Exception as exc:
            logger.warning("%r: bad offer: %s", session, exc)
            await session.close()
            await self.signaling.send("bye", peer, {"reason": f"bad offer: {exc}"})
            return
        await self.signaling.send("answer", peer, answer)
        logger.info("%r: answered (%d peers)", session, len(self.sessions))

    def _forget(self, session: PeerSession) -> None:
        if self.sessions.get(session.peer_id) is session:
            del self.sessions[session.peer_id]

    async def close_sessions(self) -> None:
        sessions = list(self.sessions.values())
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
