"""The native backend of peerproxyd.rtc.transport: libdatachannel-py (C++ ICE, DTLS, SCTP).

libdatachannel runs the connection on its own C threads and calls our callbacks there. Every
callback only hands its event to the asyncio loop (`loop.call_soon_threadsafe`); channel and
connection state are read and changed on the loop alone. Received messages are polled:
`on_available` schedules a drain that takes at most DRAIN_BATCH messages per loop turn from
libdatachannel's queue, so a fast sender cannot starve the loop and nothing is dropped; a
peer that outruns us by more than MAX_QUEUED bytes is closed (that queue has no byte bound).
Nothing is taken from it while the channel has no "message" listener (the answerer's channel
is handed to the loop before peer.py listens, and the viewer's auth may already be there).
Send backpressure is libdatachannel's bufferedAmount and its "buffered amount low" callback.

ICE settings: STUN/TURN servers, `port_range`, and one host address (`bind_address`;
several: not supported, transport.choose_backend falls back to aiortc). Not available here:
the UDP receive buffer size (the kernel default), publishing our host candidates as mDNS
names (peer.py rewrites the SDP as for aiortc), resolving `.local` candidates (we resolve
them with mdns.py and add them as trickled candidates, see `_resolve_names`).
The device certificate is passed as PEM files (libdatachannel reads them per connection).
No ICE restart (libjuice keeps its credentials for the connection's life): the restart_*
methods raise IceRestartError and the callers fall back to a new connection. No TURN over
TCP/TLS (transport.native_unsupported keeps aiortc for such servers). Seen on the test
network: Chromium behind a cone NAT ended on a relay pair with a native device (aiortc:
srflx), which works but costs the TURN server bandwidth.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import libdatachannel as rtc

from peerproxyd.appliance import mdns
from peerproxyd.config import IceSettings
from peerproxyd.errors import IceRestartError
from peerproxyd.rtc.report import ConnectionReport, pair_type
from peerproxyd.rtc.patches.aioice_ports import PortRangeExhausted, parse_port_range

if TYPE_CHECKING:  # cryptography is imported where a key is used: not by every client
    from peerproxyd.trust.identity import Identity

logger = logging.getLogger(__name__)

GATHER_TIMEOUT = 30.0  # seconds for ICE gathering (STUN/TURN servers answer well within)
DRAIN_BATCH = 64  # messages handled per loop turn before yielding
NO_RESTART = "the native backend cannot restart ICE (libjuice): a new connection instead"
# Bytes received but not yet handled that make us give up on a peer. libdatachannel's receive
# queue holds up to 2^20 messages (RECV_QUEUE_LIMIT counts messages, not bytes) before its
# SCTP thread blocks, i.e. no byte bound; a peer that honours our WINDOWs stays far below this.
MAX_QUEUED = 64 * 1024 * 1024

_STATES = {
    rtc.PeerConnection.State.New: "new",
    rtc.PeerConnection.State.Connecting: "connecting",
    rtc.PeerConnection.State.Connected: "connected",
    rtc.PeerConnection.State.Disconnected: "disconnected",
    rtc.PeerConnection.State.Failed: "failed",
    rtc.PeerConnection.State.Closed: "closed",
}
_CANDIDATE_TYPES = {
    rtc.Candidate.Type.Host: "host",
    rtc.Candidate.Type.ServerReflexive: "srflx",
    rtc.Candidate.Type.PeerReflexive: "prflx",
    rtc.Candidate.Type.Relayed: "relay",
}


def _poster(loop: asyncio.AbstractEventLoop, obj: Any) -> Callable[..., None]:
    """A function for C threads: run `obj.<name>(*args)` on `loop`. It holds `obj` weakly
    (libdatachannel keeps our callbacks, so a strong reference would be a cycle through C++
    that Python's collector cannot see); a no-op once `obj` is gone or the loop is closed."""
    ref = weakref.ref(obj)

    def call(name: str, *args: Any) -> None:
        target = ref()
        if target is not None:
            getattr(target, name)(*args)

    def post(name: str, *args: Any) -> None:
        try:
            loop.call_soon_threadsafe(call, name, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is left to tell

    return post


class NativeChannel:
    """A libdatachannel DataChannel as peerproxyd.tunnel.channel.DataChannel (aiortc's names).

    GIL rule: libdatachannel calls our callbacks holding the channel's callback mutex, and
    the binding takes the GIL inside it; `DataChannel.close()` and `reset_callbacks()` take
    that mutex without releasing the GIL, so calling them while traffic flows deadlocks the
    process (seen here: the loop thread in resetCallbacks, a worker in PyGILState_Ensure).
    So this class never calls them: `close()` closes the whole peer connection (one channel
    per connection in peerproxyd), whose binding releases the GIL, on a thread of its own."""

    def __init__(self, dc: Any, loop: asyncio.AbstractEventLoop,
                 close_connection: Callable[[], None]) -> None:
        self._dc = dc
        self._loop = loop
        self._close_connection = close_connection
        self._handlers: dict[str, list[Callable[..., Any]]] = collections.defaultdict(list)
        self._threshold = 0
        self._drain_pending = False
        self.max_queued = MAX_QUEUED
        self.label: str = dc.label()
        self.readyState = "open" if dc.is_open() else "connecting"  # noqa: N815
        post = _poster(loop, self)
        dc.on_open(lambda: post("_opened"))
        dc.on_closed(lambda: post("_closed"))
        dc.on_error(lambda error: post("_error", error))
        dc.on_buffered_amount_low(lambda: post("_emit", "bufferedamountlow"))
        ref = weakref.ref(self)

        def available(*_: Any) -> None:
            channel = ref()
            if channel is not None:
                channel._schedule_drain(post)

        dc.on_available(available)
        self._schedule_drain(post)  # anything that arrived before on_available was set

    # ----- the DataChannel protocol
    @property
    def bufferedAmount(self) -> int:  # noqa: N802 (aiortc's name)
        try:
            return int(self._dc.buffered_amount())
        except RuntimeError:
            return 0

    @property
    def bufferedAmountLowThreshold(self) -> int:  # noqa: N802
        return self._threshold

    @bufferedAmountLowThreshold.setter
    def bufferedAmountLowThreshold(self, value: int) -> None:  # noqa: N802
        self._threshold = value
        self._dc.set_buffered_amount_low_threshold(value)

    def send(self, data: bytes | str) -> None:
        if self.readyState != "open":
            return
        try:
            self._dc.send(data)  # the binding releases the GIL here
        except RuntimeError as exc:  # closed under us (a C thread saw it first)
            logger.debug("%s: send failed: %s", self.label, exc)
            self._closed()

    def on(self, event: str, f: Callable[..., Any]) -> Callable[..., Any]:
        self._handlers[event].append(f)
        if event == "message" and not self._drain_pending:
            self._drain_pending = True  # what arrived before anyone listened (see _drain)
            self._loop.call_soon(self._drain)
        return f

    def remove_listener(self, event: str, f: Callable[..., Any]) -> None:
        self._handlers[event].remove(f)

    def close(self) -> None:
        """Close the channel: its whole peer connection (see the class docstring)."""
        if self.readyState in ("open", "connecting"):
            self.readyState = "closing"
            self._close_connection()

    # ----- events, on the loop
    def _emit(self, event: str, *args: Any) -> None:
        for f in list(self._handlers.get(event, ())):
            f(*args)

    def _opened(self) -> None:
        if self.readyState == "connecting":
            self.readyState = "open"
            self._emit("open")

    def _closed(self) -> None:
        if self.readyState != "closed":
            self.readyState = "closed"
            self._emit("close")

    def _error(self, error: Any) -> None:
        logger.warning("data channel %s: %s", self.label, error)

    def _schedule_drain(self, post: Callable[..., None]) -> None:
        # Called on a C thread; a flag set before draining (see _drain) loses no wake-up.
        if not self._drain_pending:
            self._drain_pending = True
            post("_drain")

    def _drain(self) -> None:
        self._drain_pending = False
        for _ in range(DRAIN_BATCH):
            if self.readyState == "closed" or not self._handlers.get("message"):
                return  # no listener yet (the channel is being handed over): keep it queued
            message = self._dc.receive()
            if message is None:
                return
            self._emit("message", message)
        queued = self._dc.available_amount()
        if queued > self.max_queued:
            logger.warning("data channel %s: %d bytes received and not handled yet: the peer "
                           "sends faster than we can handle; closing", self.label, queued)
            self.close()
            return
        self._drain_pending = True
        self._loop.call_soon(self._drain)  # more waiting: after the other ready callbacks


NAME_WAIT = 0.25
"""Seconds a native viewer waits for the device's `.local` names before starting ICE."""


class NativeTransport:
    backend = "native"
    restarts_ice = False

    def __init__(self, ice: IceSettings, *, identity: Identity | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._ice = ice
        self.pc = rtc.PeerConnection(configuration(ice, identity))
        self._state = "new"
        self._state_callbacks: list[Callable[[str], None]] = []
        self._channel_callback: Callable[[NativeChannel], None] | None = None
        self._channels: list[NativeChannel] = []  # kept until the connection is closed
        self._gathered = asyncio.Event()
        self._closed = False
        self._resolving: set[asyncio.Task[None]] = set()
        self._resolved_into: dict[str, str] | None = None
        self._used_mdns = False
        self._mdns_addresses: set[str] = set()  # what the viewer's `.local` names resolved to
        post = _poster(self._loop, self)
        complete = rtc.PeerConnection.GatheringState.Complete
        self.pc.on_state_change(lambda state: post("_set_state", _STATES[state]))
        self.pc.on_gathering_state_change(
            lambda state: state == complete and post("_set_gathered"))
        ref = weakref.ref(self)
        loop = self._loop

        def data_channel(dc: Any) -> None:  # on a C thread: wrap at once, so nothing is missed
            transport = ref()
            if transport is not None:
                post("_on_channel", NativeChannel(dc, loop, transport._close_soon))

        self.pc.on_data_channel(data_channel)

    @property
    def state(self) -> str:
        return self._state

    def on_state(self, callback: Callable[[str], None]) -> None:
        self._state_callbacks.append(callback)

    def on_channel(self, callback: Callable[[Any], None]) -> None:
        self._channel_callback = callback

    def create_channel(self, label: str) -> NativeChannel:
        channel = NativeChannel(self.pc.create_data_channel(label), self._loop, self._close_soon)
        self._channels.append(channel)
        return channel

    async def offer(self) -> str:
        self._describe(rtc.Description.Type.Offer)
        return await self._local_sdp()

    async def answer(self, offer_sdp: str) -> str:
        try:
            self.pc.set_remote_description(rtc.Description(offer_sdp, "offer"))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"unusable offer: {exc}") from exc
        self._resolve_names(mdns.named_candidates(offer_sdp))
        self._describe(rtc.Description.Type.Answer)
        return await self._local_sdp()

    async def set_answer(self, answer_sdp: str) -> None:
        # The offerer's side (a native viewer): the device's host candidates are `.local`
        # names, which must be addresses before ICE starts, or libjuice may nominate the
        # srflx pair through the router before a late host candidate is even tried.
        if named := mdns.named_candidates(answer_sdp):
            answer_sdp = await self._with_resolved(answer_sdp, named)
        try:
            self.pc.set_remote_description(rtc.Description(answer_sdp, "answer"))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"unusable answer: {exc}") from exc

    async def add_candidate(self, payload: dict[str, Any]) -> None:
        text = payload.get("candidate")
        if not text:
            return  # end-of-candidates
        mid = str(payload.get("sdpMid") or "0")
        if named := mdns.named_candidates(f"a={text}"):
            self._resolve_names([(mid, *named[0][1:])])
            return
        self._add_remote(mid, str(text))

    def _add_remote(self, mid: str, candidate: str) -> None:
        try:
            self.pc.add_remote_candidate(rtc.Candidate(candidate, mid))
        except (RuntimeError, ValueError) as exc:
            logger.debug("candidate %r not used: %s", candidate, exc)

    def _resolve_names(self, named: list[tuple[str, str, str]]) -> list[asyncio.Task[None]]:
        """libdatachannel resolves no `.local` names: resolve them (mdns.py) and add each as
        a trickled candidate when its answer comes (until then, and for a name nobody
        answers, the peer's checks reach us and make a peer-reflexive pair)."""
        tasks = []
        for mid, candidate, name in named:
            task = self._loop.create_task(self._add_resolved(mid, candidate, name))
            self._resolving.add(task)
            task.add_done_callback(self._resolving.discard)
            tasks.append(task)
        return tasks

    async def _with_resolved(self, sdp: str, named: list[tuple[str, str, str]]) -> str:
        """`sdp` with the names that resolve within NAME_WAIT seconds replaced by their
        addresses (a LAN answers in milliseconds; a viewer elsewhere waits NAME_WAIT once);
        later answers are added as trickled candidates (`_resolve_names`)."""
        resolved: dict[str, str] = {}
        self._resolved_into = resolved
        tasks = self._resolve_names(named)
        await asyncio.wait(tasks, timeout=NAME_WAIT)
        self._resolved_into = None
        for _, candidate, name in named:
            if name in resolved:
                sdp = sdp.replace(candidate, mdns.with_address(candidate, resolved[name]))
        return sdp

    async def _add_resolved(self, mid: str, candidate: str, name: str) -> None:
        self._used_mdns = True
        address = await mdns.resolve_name(name, self)
        if address is None or self._closed:
            logger.debug("%s did not resolve", name)
            return
        logger.debug("%s is %s", name, address)
        self._mdns_addresses.add(address)
        if self._resolved_into is not None:  # still building the SDP: it goes in there
            self._resolved_into[name] = address
        else:
            self._add_remote(mid, mdns.with_address(candidate, address))

    async def report(self, *, measure_rtt: bool = True) -> ConnectionReport | None:
        local, remote = rtc.Candidate(), rtc.Candidate()
        if self._closed or not self.pc.get_selected_candidate_pair(local, remote):
            return None
        ends = [SimpleNamespace(type=_CANDIDATE_TYPES.get(c.type(), "host"),
                                host=c.address() or "", port=c.port() or 0)
                for c in (local, remote)]
        rtt = self.pc.rtt() if measure_rtt else None
        return ConnectionReport(
            type=pair_type(ends[0], ends[1]),  # type: ignore[arg-type]
            protocol=_relay_protocol(self._ice) if ends[0].type == "relay" else "udp",
            local_type=ends[0].type,
            local=f"{ends[0].host}:{ends[0].port}",
            remote_type=ends[1].type,
            remote=f"{ends[1].host}:{ends[1].port}",
            remote_ip=ends[1].host,
            remote_mdns=ends[1].host in self._mdns_addresses,
            rtt_ms=rtt.total_seconds() * 1000 if rtt is not None else None,
            backend="native",
        )

    async def close(self) -> None:
        self._close_soon()
        for task in list(self._resolving):
            task.cancel()
        if self._used_mdns:
            await mdns.release(self)

    async def restart_offer(self) -> tuple[str, Any]:
        raise IceRestartError(NO_RESTART)

    async def finish_restart(self, restart: Any, answer_sdp: str) -> bool:
        raise IceRestartError(NO_RESTART)

    async def restart_answer(self, offer_sdp: str) -> tuple[str, Any]:
        raise IceRestartError(NO_RESTART)

    def _close_soon(self) -> None:
        """Close without waiting. The binding's close releases the GIL and waits until the
        connection is Closed: when the remote vanished without a goodbye (a closed tab) that
        is its SCTP shutdown timing out (~13 s measured with Chromium). It runs on a daemon
        thread of its own, which keeps the channels (their libdatachannel objects) until
        then: dropping the last one with the GIL held while a callback runs would deadlock
        (see NativeChannel)."""
        if self._closed:
            return
        self._closed = True
        self._set_state("closed")
        thread = threading.Thread(target=_close, args=(self.pc, self._channels, self._loop),
                                  name="peerproxyd-native-close", daemon=True)
        _closing.add(thread)
        thread.start()

    # ----- on the loop
    def _describe(self, kind: Any) -> None:
        """Set our description, which binds the ICE socket: within `port_range` libjuice
        fails only with "Failed to gather local ICE candidates" when every port is taken,
        so say what aiortc's backend says (aioice_ports.PortRangeExhausted)."""
        try:
            self.pc.set_local_description(kind)
        except RuntimeError as exc:
            if self._ice.port_range:
                raise PortRangeExhausted(parse_port_range(self._ice.port_range)) from exc
            raise

    async def _local_sdp(self) -> str:
        if self.pc.gathering_state() == rtc.PeerConnection.GatheringState.Complete:
            self._gathered.set()
        async with asyncio.timeout(GATHER_TIMEOUT):
            await self._gathered.wait()
        description = self.pc.local_description()
        assert description is not None
        return str(description)

    def _set_gathered(self) -> None:
        self._gathered.set()

    def _set_state(self, state: str) -> None:
        if state == self._state or (self._state == "closed"):
            return
        self._state = state
        for callback in list(self._state_callbacks):
            callback(state)

    def _on_channel(self, channel: NativeChannel) -> None:
        self._channels.append(channel)
        if self._channel_callback is None:
            channel.close()
            return
        self._channel_callback(channel)


# Close threads still running. A process that exits while libdatachannel is still closing a
# connection aborts ("terminate called without an active exception": SIGABRT, a stopped
# daemon would exit 134, not 0). Closing to a viewer that vanished takes ~13 s (its SCTP
# shutdown times out), so the CLI's exit waits only briefly and then leaves without running
# C++ destructors (transport.exit_code); other processes wait here, at exit, a little longer.
_closing: set[threading.Thread] = set()
CLOSE_AT_EXIT = 5.0  # seconds


def wait_for_closes(timeout: float) -> int:
    """Wait up to `timeout` seconds for the close threads; how many are still running."""
    deadline = time.monotonic() + timeout
    for thread in list(_closing):
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(thread.is_alive() for thread in list(_closing))


atexit.register(wait_for_closes, CLOSE_AT_EXIT)


def _close(pc: Any, channels: list[NativeChannel], loop: asyncio.AbstractEventLoop) -> None:
    """On its own thread: close `pc` (the binding releases the GIL), then tell the channels
    on the loop, whether or not libdatachannel called their on_closed."""
    try:
        pc.close()
    except RuntimeError as exc:
        logger.debug("closing a native peer connection: %s", exc)
    finally:
        _closing.discard(threading.current_thread())
    for channel in channels:
        try:
            loop.call_soon_threadsafe(channel._closed)
        except RuntimeError:
            pass  # the loop is closed


# ----------------------------------------------------------------------------- configuration
def configuration(ice: IceSettings, identity: Identity | None) -> Any:
    """libdatachannel's Configuration for our ICE settings (and device certificate)."""
    config = rtc.Configuration()
    config.disable_auto_negotiation = True
    config.ice_servers = [s for server in ice.servers for s in _ice_servers(server)]
    if ice.host_addresses:
        config.bind_address = str(ice.host_addresses[0])
    if ice.port_range:
        low, _, high = ice.port_range.partition("-")
        config.port_range_begin, config.port_range_end = int(low), int(high or low)
    if identity is not None:
        cert, key = _pem_files(identity)
        config.certificate_pem_file, config.key_pem_file = str(cert), str(key)
    return config


def _ice_servers(server: Any) -> list[Any]:
    out = []
    for url in server.urls:
        scheme, _, rest = url.partition(":")
        rest, _, query = rest.partition("?")
        host, _, port = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
        if scheme == "stun":
            out.append(rtc.IceServer(host, int(port or 3478)))
            continue
        transport = parse_qs(query).get("transport", ["udp"])[0]
        relay = (rtc.IceServer.RelayType.TurnTls if scheme == "turns" else
                 rtc.IceServer.RelayType.TurnTcp if transport == "tcp" else
                 rtc.IceServer.RelayType.TurnUdp)
        default_port = 5349 if scheme == "turns" else 3478
        out.append(rtc.IceServer(host, int(port or default_port), server.username or "",
                                 server.credential or "", relay))
    return out


def _relay_protocol(ice: IceSettings) -> str:
    for server in ice.servers:
        for url in server.urls:
            if url.startswith("turns:"):
                return "tls"
            if url.startswith("turn:"):
                return "tcp" if "transport=tcp" in url else "udp"
    return "udp"


_pem_dir: Path | None = None


def _pem_files(identity: Identity) -> tuple[Path, Path]:
    """The identity's certificate and key as PEM files in a private (0700) directory of this
    process, removed at exit; libdatachannel takes only file names."""
    global _pem_dir
    if _pem_dir is None:
        _pem_dir = Path(tempfile.mkdtemp(prefix="peerproxyd-dtls-"))
        atexit.register(shutil.rmtree, _pem_dir, True)
    name = identity.device_id
    cert, key = _pem_dir / f"{name}.crt", _pem_dir / f"{name}.key"
    if not key.exists():
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        cert_pem, key_pem = identity.pem()
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        cert.write_bytes(cert_pem)
    return cert, key
