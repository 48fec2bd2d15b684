"""ICE restart on a live aiortc RTCPeerConnection: new credentials, new candidates, same DTLS.

Why: aiortc 1.16 / aioice 0.13 cannot restart ICE (RFC 8445 section 9). An aioice Connection
gathers once, checks once and keeps its credentials for life, and aiortc answers a restart
offer with the old ufrag and no new candidates. So when the daemon's LAN address changes, the
only way back used to be a new peer connection (a new DTLS handshake, a new SCTP association,
and every request in flight lost). Browsers restart ICE under a live DTLS association; so do
we now, from our side.

How: a restart builds a second aioice Connection, the new "generation", with the same ICE
settings (role, STUN/TURN servers, transport policy; our process-wide aioice fixes - host
address allow list, port range, mDNS, consent, nomination - apply to it as to any Connection).
Until it has a nominated pair:

- aiortc's RTCIceGatherer reports it (new ufrag/pwd, candidates gathered on the current
  addresses), so the next offer or answer aiortc writes carries them;
- remote candidates (in the SDP or trickled) go to it;
- but DTLS keeps sending over the old Connection's nominated pair, and both Connections
  deliver what they receive to one queue, which DTLS reads: nothing is lost on either path.

When the new Connection has nominated a pair, the RTCIceTransport switches to it (send, receive,
the monitor that turns a closed Connection into `failed`) and the old Connection is closed
without waking the DTLS reader. DTLS and SCTP never notice: no new handshake, the data
channels and their streams go on. If no pair is nominated within `timeout` seconds the new
Connection is dropped and the old one stays; the caller then falls back to a new peer
connection (the descriptions no longer match the ICE state).

Only the SCTP (data channel) transport is restarted: that is all peerproxyd negotiates.
Regression tests: tests/rtc/test_aiortc_ice_restart.py (two aiortc peers on loopback) and
tests/test_nat.py (the daemon's address changes under a download).
"""

from __future__ import annotations

import asyncio
import logging

from aioice import Connection
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceTransport, candidate_to_aioice

from peerproxyd.errors import IceRestartError

logger = logging.getLogger(__name__)

RESTART_TIMEOUT = 5.0
"""Seconds a restart may take, from the remote's credentials to a nominated pair."""


def ice_transport(pc: RTCPeerConnection) -> RTCIceTransport:
    """The ICE transport under `pc`'s data channels; IceRestartError if it is not live."""
    sctp = pc.sctp
    transport = sctp.transport.transport if sctp is not None else None
    if transport is None or transport.state != "completed" or pc.connectionState != "connected":
        raise IceRestartError("no connected ICE transport to restart")
    return transport


class IceRestart:
    """One ICE restart of `pc`, begun at construction (like `restartIce()` in browsers).

    Then: create and set the descriptions as usual (offerer: local offer, remote answer;
    answerer: remote offer, local answer), call `start()`, and `await wait()`."""

    def __init__(self, pc: RTCPeerConnection, *, timeout: float = RESTART_TIMEOUT) -> None:
        self._transport = transport = ice_transport(pc)
        self._pc = pc
        self._timeout = timeout
        self._gatherer = gatherer = transport.iceGatherer
        self.old: Connection = transport._connection
        self.new: Connection = _next_generation(self.old)
        self._done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._remote_end_before = gatherer._remote_candidates_end
        # The gatherer describes the new generation in the next offer/answer (it gathers anew
        # in setLocalDescription), and remote candidates go to it.
        gatherer._connection = self.new
        gatherer._RTCIceGatherer__state = "new"  # type: ignore[attr-defined]
        gatherer._remote_candidates_end = False
        transport.addRemoteCandidate = self._add_remote_candidate  # type: ignore[method-assign]
        transport.on("statechange", self._on_transport_state)
        logger.info("ICE restart: %s -> %s (new ufrag %s)", self.old, self.new,
                    self.new.local_username)

    @property
    def done(self) -> bool:
        return self._done.done()

    def start(self) -> None:
        """Check against the remote's new credentials (from `pc.remoteDescription`, which must
        be the remote half of this restart); the pair switches when one is nominated."""
        if self._task is not None or self.done:
            return
        remote = self._pc.remoteDescription
        params = None
        if remote is not None:
            for media in aiortc_sdp.SessionDescription.parse(remote.sdp).media:
                if media.kind == "application":
                    params = media.ice
        if params is None or not params.usernameFragment or not params.password:
            self._spawn_abandon(IceRestartError("no remote ICE credentials"))
            return
        if params.usernameFragment == self.old.remote_username:
            self._spawn_abandon(IceRestartError("the remote kept its ICE credentials"))
            return
        self.new.remote_is_lite = params.iceLite
        self.new.remote_username = params.usernameFragment
        self.new.remote_password = params.password
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait(self) -> bool:
        """True once the new pair carries the connection; False if the restart failed."""
        return await asyncio.shield(self._done)

    async def cancel(self) -> None:
        """Give up (the old generation stays): e.g. the signaling round trip failed."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if not self.done:
            await self._abandon("cancelled")

    async def _run(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self.new.connect()
        except (TimeoutError, ConnectionError) as exc:
            await self._abandon(str(exc) or "no pair nominated within "
                                f"{self._timeout:.0f} s")
            return
        await self._switch()

    async def _add_remote_candidate(self, candidate: RTCIceCandidate | None) -> None:
        """aiortc's RTCIceTransport.addRemoteCandidate, for the new generation."""
        if self._gatherer._remote_candidates_end:
            return
        if candidate is None:
            self._gatherer._remote_candidates_end = True
            await self.new.add_remote_candidate(None)
        else:
            await self.new.add_remote_candidate(candidate_to_aioice(candidate))

    async def _switch(self) -> None:
        transport = self._transport
        if transport.state != "completed":  # closed or failed meanwhile
            await self._abandon(f"ICE transport {transport.state}")
            return
        transport._connection = self.new
        transport._recv = self.new.recv
        transport._send = self.new.send
        self._detach()
        # aiortc's monitor waits for the old Connection's "closed" event: watch the new one.
        monitor = transport._RTCIceTransport__monitor_task  # type: ignore[attr-defined]
        transport._RTCIceTransport__monitor_task = asyncio.ensure_future(  # type: ignore[attr-defined]
            transport._monitor()
        )
        if monitor is not None:
            monitor.cancel()
        pair = self.new._nominated.get(1)
        logger.info("ICE restart done: %s now carries the connection via %s", self.new, pair)
        self._done.set_result(True)
        self._retire(self.old)

    async def _abandon(self, reason: str) -> None:
        if self.done:
            return
        logger.warning("ICE restart failed (%s): keeping %s", reason, self.old)
        self._done.set_result(False)
        self._detach()
        if self._gatherer._connection is self.new:
            self._gatherer._connection = self.old
            self._gatherer._RTCIceGatherer__state = "completed"  # type: ignore[attr-defined]
            self._gatherer._remote_candidates_end = self._remote_end_before
        self._retire(self.new)

    def _retire(self, connection: Connection) -> None:
        """Close the generation that lost, in the background: closing a TURN allocation from
        an address that went away retries for up to a minute."""
        self._closing = task = asyncio.get_running_loop().create_task(_close_quietly(connection))
        _retiring.add(task)
        task.add_done_callback(_retiring.discard)

    async def closed(self) -> None:
        """Wait until the generation that lost has closed its sockets."""
        await self.wait()
        if self._closing is not None:
            await asyncio.shield(self._closing)

    def _spawn_abandon(self, error: Exception) -> None:
        self._task = asyncio.get_running_loop().create_task(self._abandon(str(error)))

    def _detach(self) -> None:
        self._transport.__dict__.pop("addRemoteCandidate", None)
        self._transport.remove_listener("statechange", self._on_transport_state)

    def _on_transport_state(self) -> None:
        """The peer connection closed or failed during the restart: drop the new generation."""
        if self._transport.state in ("closed", "failed") and not self.done:
            if self._task is not None:
                self._task.cancel()
            self._task = asyncio.get_running_loop().create_task(
                self._abandon(f"ICE transport {self._transport.state}")
            )


# Generations being closed; a task must be referenced until it is done.
_retiring: set[asyncio.Task[None]] = set()


def _next_generation(old: Connection) -> Connection:
    """A Connection with `old`'s ICE settings and role, new credentials, and `old`'s inbound
    queue: whichever generation a datagram arrives on, DTLS reads it."""
    new = Connection(
        ice_controlling=old.ice_controlling,
        stun_server=old.stun_server,
        turn_server=old.turn_server,
        turn_username=old.turn_username,
        turn_password=old.turn_password,
        turn_ssl=old.turn_ssl,
        turn_transport=old.turn_transport,
        use_ipv4=old._use_ipv4,
        use_ipv6=old._use_ipv6,
        transport_policy=old._transport_policy,
    )
    new._queue = old._queue
    return new


async def _close_quietly(connection: Connection) -> None:
    """Close a Connection that shares its inbound queue with a live one: its close() wakes
    readers with None ("connection lost"), which must reach no reader of the shared queue."""
    connection._queue = asyncio.Queue()
    try:
        await connection.close()
    except Exception as exc:  # closing sockets of an address that went away
        logger.info("ICE restart: closing %s: %r", connection, exc)


async def answer_restart(
    pc: RTCPeerConnection, offer: RTCSessionDescription, *, timeout: float = RESTART_TIMEOUT
) -> tuple[RTCSessionDescription, IceRestart]:
    """The answerer's half: apply a restart offer to live `pc`, return our answer (new
    credentials, every candidate gathered) and the running restart."""
    restart = IceRestart(pc, timeout=timeout)
    try:
        await pc.setRemoteDescription(offer)
        await pc.setLocalDescription(await pc.createAnswer())
    except BaseException:
        await restart.cancel()
        raise
    restart.start()
    return pc.localDescription, restart


async def offer_restart(
    pc: RTCPeerConnection, *, timeout: float = RESTART_TIMEOUT
) -> tuple[RTCSessionDescription, IceRestart]:
    """The offerer's half: a restart offer for live `pc`. Then `finish_restart()` with the
    answer."""
    restart = IceRestart(pc, timeout=timeout)
    try:
        await pc.setLocalDescription(await pc.createOffer())
    except BaseException:
        await restart.cancel()
        raise
    return pc.localDescription, restart


async def finish_restart(
    pc: RTCPeerConnection, restart: IceRestart, answer: RTCSessionDescription
) -> bool:
    """Apply the remote answer to an offered restart and wait for it to end."""
    try:
        await pc.setRemoteDescription(answer)
    except BaseException:
        await restart.cancel()
        raise
    restart.start()
    return await restart.wait()

