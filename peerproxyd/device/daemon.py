"""Daemon: keeps the device registered with the signaling server and answers viewers.

The device is its identity (identity.py): loaded from `[device] state_dir`, created there on
first start. It registers with it and uses its certificate for every peer connection.

Lifecycle, for systemd (`Type=notify`, see notify.py): READY=1 once the first signaling
attempt has ended, registered or not, so boot never waits on the network; STATUS= kept
current; WATCHDOG=1 while the signaling loop is alive. `stop()` (SIGTERM) sends STOPPING=1
and drains: requests in flight get up to `[daemon] drain_timeout` seconds, new ones get 503,
new viewers are turned away; then every peer is closed. `reload()` (SIGHUP) re-reads the
configuration file and applies service changes to every peer without dropping any.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from peerproxyd import __version__
from peerproxyd.appliance import mdns, netwatch
from peerproxyd.appliance.notify import Notifier
from peerproxyd.config import ServiceSettings, Settings, load
from peerproxyd.device.metrics import DaemonMetrics
from peerproxyd.device.panel import PeerRow, serve_panel
from peerproxyd.device.peer import PeerSession
from peerproxyd.device.router import Router, new_upstream_session
from peerproxyd.errors import ConfigError, IceRestartError, ViewerStoreError
from peerproxyd.protocol import RequestHead
from peerproxyd.rtc.transport import choose_backend, configure_ice, device_identity
from peerproxyd.signaling.client import HANDSHAKE_TIMEOUT, SignalingClient
from peerproxyd.signaling.messages import Message
from peerproxyd.trust import sharing
from peerproxyd.trust.identity import Identity, load_or_create
from peerproxyd.trust.viewer_auth import format_time
from peerproxyd.trust.viewers import ViewerStore
from peerproxyd.tunnel.channel import ChannelStream
from peerproxyd.tunnel.replies import reply_quietly

logger = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0
"""Seconds between STATUS= refreshes (peer and stream counts change without an event)."""
ACCESS_INTERVAL = 1.0
"""Seconds between checks of the viewer store and of every peer (revoked, expired, idle)."""
RESTART_ONLY = ("device", "signaling", "ice", "transport")
"""Tables a reload cannot change in a running daemon: it keeps the old ones and says so."""
SHUTDOWN_TEXT = "device is shutting down"
RENEGOTIATE_WAIT = 10.0
"""Seconds a network change waits for the new signaling registration before the restarts."""
ICE_RESTART_WAIT = 8.0
"""Seconds a viewer asked to restart ICE gets before the fallback: `bye`, a new connection."""
UNSENT_POLL = 0.05
"""Seconds between looks at the channels' unacknowledged bytes while draining."""


class DrainingRouter(Router):
    """The Router, counting requests in flight, and answering 503 once draining."""

    def __init__(
        self, services: dict[str, ServiceSettings], session: aiohttp.ClientSession,
        metrics: DaemonMetrics,
    ) -> None:
        super().__init__(services, session, metrics)
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing: set[asyncio.Task[None]] = set()

    def start_draining(self) -> None:
        """Refuse new requests from now on, and close the open WebSockets with 1001 (they
        would otherwise hold the drain until its timeout). Never blocks."""
        if self.draining:
            return
        self.draining = True
        for relay in self.websockets:
            task = asyncio.create_task(relay.go_away(SHUTDOWN_TEXT.strip()))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def handle(
        self, stream: ChannelStream, head: RequestHead, end_stream: bool, *, peer: str,
        address: str | None = None,
    ) -> None:
        if self.draining:
            started = time.monotonic()
            self.metrics.error("shutting_down")
            await _refuse(stream)
            self.account(stream, head, 503, started)
            logger.info("%s %s %s 503 (shutting down) peer=%s",
                        head.service, head.method, head.target, peer)
            return
        self.in_flight += 1
        self._idle.clear()
        try:
            await super().handle(stream, head, end_stream, peer=peer, address=address)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


async def _refuse(stream: ChannelStream) -> None:
    await reply_quietly(stream, 503, SHUTDOWN_TEXT, headers=(("Retry-After", "5"),))


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | Path | None = None,
        notifier: Notifier | None = None,
        identity: Identity | None = None,
        viewers: ViewerStore | None = None,
        packing: bool = True,
    ) -> None:
        """`identity` defaults to the one in `[device] state_dir` (created if there is
        none); IdentityError if it cannot be read. `viewers` defaults to the viewer store in
        the same directory. ConfigError if `[transport] backend` cannot run here. `packing`
        False: never agree to packed messages, as a daemon before them (tests)."""
        self.settings = settings
        self.packing = packing
        try:
            self.backend, self.backend_reason = choose_backend(settings.transport.backend,
                                                               settings.ice)
        except ValueError as exc:
            raise ConfigError([f"transport.backend: {exc}"]) from None
        self.identity = (
            identity if identity is not None else load_or_create(settings.device.state_path)
        )
        self.device_id = self.identity.device_id
        self.viewers = (
            viewers if viewers is not None else ViewerStore(settings.device.state_path)
        )
        self.config_path = Path(config_path) if config_path is not None else None
        self.notifier = notifier if notifier is not None else Notifier()
        self.sessions: dict[str, PeerSession] = {}
        self.metrics = DaemonMetrics(lambda: list(self.sessions.values()),
                                     version=__version__, backend=self.backend)
        self.signaling = SignalingClient(
            settings.signaling.url,
            identity=self.identity,
            backoff_min=settings.signaling.reconnect_min,
            backoff_max=settings.signaling.reconnect_max,
        )
        self._router: DrainingRouter | None = None
        self.registered = asyncio.Event()
        self.stopping = False
        self._stop = asyncio.Event()
        self._attempted = False  # the first signaling attempt has ended
        self._signaling_changed = time.monotonic()
        self._signaling_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._reload_problem: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def label(self) -> str:
        """The device id, with the friendly name if there is one, for logs."""
        name = self.settings.device.name
        return f"{self.device_id} ({name})" if name else self.device_id

    async def run(self) -> None:
        """Serve until cancelled, or until stop() and the drain that follows."""
        configure_ice(self.settings.ice, self.backend)
        logger.info("WebRTC backend: %s (%s)", self.backend, self.backend_reason)
        self._load_viewers()
        names = ", ".join(f"{n} -> {s.upstream}" for n, s in self.settings.services.items())
        logger.info("device %s serving %s", self.label, names)
        logger.info("DTLS fingerprint sha-256 %s", self.identity.fingerprint)
        advertisement = (
            mdns.advertise(self.device_id, __version__, list(self.settings.services),
                           name=self.settings.device.name)
            if self.settings.ice.mdns
            else contextlib.nullcontext()
        )
        with device_identity(self.identity, self.backend):
            await self._serve(advertisement)

    async def _serve(self, advertisement: contextlib.AbstractAsyncContextManager[Any]) -> None:
        daemon = self.settings.daemon
        panel = (serve_panel(DaemonPanelSource(self), daemon.panel, daemon.panel_allow,
                             metrics=self.metrics.registry)
                 if daemon.panel else contextlib.nullcontext())
        async with new_upstream_session() as http, advertisement, panel:
            self._router = DrainingRouter(self.settings.services, http, self.metrics)
            signaling = asyncio.create_task(
                self.signaling.run(self._on_message, self._on_signaling_state)
            )
            self._signaling_task = signaling
            stop = asyncio.create_task(self._stop.wait())
            helpers = [
                asyncio.create_task(self.notifier.watchdog(self.healthy)),
                asyncio.create_task(self._status_loop()),
                asyncio.create_task(self._access_loop()),
                asyncio.create_task(netwatch.watch_addresses(self._on_addresses_changed)),
            ]
            try:
                await asyncio.wait({signaling, stop}, return_when=asyncio.FIRST_COMPLETED)
                if signaling.done():
                    signaling.result()  # a fatal SignalingError ends the daemon
                else:
                    await self._drain()
            finally:
                for task in (stop, *helpers, *self._tasks):
                    task.cancel()
                await self.close_sessions()
                await self.signaling.close()
                signaling.cancel()
                await asyncio.gather(
                    signaling, stop, *helpers, *self._tasks, return_exceptions=True
                )

    # ----- lifecycle requests (called from signal handlers: never block)
    def stop(self) -> None:
        """Begin a graceful stop: STOPPING=1, drain, then run() returns."""
        if self.stopping:
            return
        self.stopping = True
        in_flight = self._router.in_flight if self._router else 0
        self.notifier.stopping(self.status_text())
        logger.info("stopping: draining %d open requests (up to %.1f s)",
                    in_flight, self.settings.daemon.drain_timeout)
        if self._router is not None:
            self._router.start_draining()
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the configuration file in the background (SIGHUP)."""
        if self.stopping:
            return
        self._spawn(self.reload())

    async def _drain(self) -> None:
        assert self._router is not None
        self._router.start_draining()
        timeout = self.settings.daemon.drain_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._router.wait_idle()
                # The last responses may still sit in the channels' send queues: closing
                # now would cut them off. Wait until the viewers have acknowledged them.
                for _ in range(int(timeout / UNSENT_POLL) + 1):
                    if not any(s.link and s.link.unsent() for s in self.sessions.values()):
                        break
                    await asyncio.sleep(UNSENT_POLL)
            logger.info("drained: no open requests left")
        except TimeoutError:
            logger.warning("drain timeout (%.1f s): closing %d open requests",
                           timeout, self._router.in_flight)

    # ----- reload
    async def reload(self) -> bool:
        """Re-read config_path and apply it; on any problem keep the running configuration.

        Services (added, removed, changed), limits for new peers, the log level and the drain
        timeout take effect at once; no peer is dropped. [device], [signaling], [ice] and
        [transport] need a restart. Sends RELOADING=1, then READY=1 whatever the outcome.
        """
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                if self.config_path is None:
                    raise ConfigError(["no configuration file to re-read"])
                logger.info("reloading %s", self.config_path)
                new = load(self.config_path)
            except ConfigError as exc:
                for problem in exc.problems:
                    logger.error("reload: %s", problem)
                logger.error("reload failed; still running the previous configuration")
                self._reload_problem = f"reload failed: {exc.problems[0]}"
                self.notifier.ready(self.status_text())
                return False
            self._apply(new)
            self._reload_problem = None
            self.notifier.ready(self.status_text())
            return True

    def _apply(self, new: Settings) -> None:
        old = self.settings
        kept = [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]
        if kept:
            logger.warning("reload: changes to %s take effect after a restart",
                           ", ".join(f"[{name}]" for name in kept))
            new = dataclasses.replace(new, **{name: getattr(old, name) for name in kept})
        added = sorted(new.services.keys() - old.services.keys())
        removed = sorted(old.services.keys() - new.services.keys())
        changed = sorted(
            n for n in new.services.keys() & old.services.keys()
            if new.services[n] != old.services[n]
        )
        self.settings = new
        if self._router is not None:
            self._router.services = new.services
        if os.environ.get("PEERPROXYD_DEBUG") != "1":
            logging.getLogger().setLevel(new.log.level.upper())
        logger.info(
            "reloaded: services %s (added: %s; removed: %s; changed: %s); %d peers kept",
            ", ".join(new.services), ", ".join(added) or "-", ", ".join(removed) or "-",
            ", ".join(changed) or "-", len(self.sessions),
        )

    # ----- status and health
    def status_text(self) -> str:
        """One line for systemd's STATUS=: the tunnel state, peers and open streams."""
        url = self.settings.signaling.url
        if self.stopping:
            in_flight = self._router.in_flight if self._router else 0
            state = f"stopping: draining {in_flight} open requests"
        elif self.signaling.connected:
            state = f"registered as {self.device_id} at {url}"
        elif not self._attempted:
            state = f"connecting to {url}"
        else:
            state = f"signaling down ({self.signaling.last_error}); retrying {url}"
        streams = sum(s.open_streams for s in self.sessions.values())
        text = f"{state}; peers {len(self.sessions)}, open streams {streams}"
        if self._reload_problem:
            text += f"; {self._reload_problem}"
        return text

    def healthy(self) -> bool:
        """For the watchdog: the signaling loop runs and makes progress (registered, or
        attempts ending at the pace its backoff allows). The event loop is healthy if this
        gets called at all."""
        task = self._signaling_task
        if task is None or task.done():
            return False
        if self.signaling.connected:
            return True
        limit = self.signaling.backoff_max + 2 * HANDSHAKE_TIMEOUT + 5.0
        return time.monotonic() - self._signaling_changed < limit

    # ----- viewers
    def _load_viewers(self) -> None:
        """(Re)read the viewer store; a bad file keeps the viewers known so far."""
        try:
            self.viewers.load()
        except ViewerStoreError as exc:
            logger.error("viewer store: %s (keeping the %d viewers read before)",
                         exc, len(self.viewers.records))
            return
        logger.info("viewer store %s: %d viewers", self.viewers.path, len(self.viewers.records))

    def _refresh_viewers(self) -> None:
        """Re-read the viewer store if the file changed (a stat, cheap enough per auth)."""
        try:
            changed = self.viewers.changed()
        except ViewerStoreError as exc:
            logger.error("viewer store: %s", exc)
            return
        if changed:
            self._load_viewers()

    async def _access_loop(self) -> None:
        """Every second: re-read the viewer store if it changed, then let every session
        check its viewer (revoked, expired, shared anew) and its idleness."""
        while True:
            await asyncio.sleep(ACCESS_INTERVAL)
            self._refresh_viewers()
            now = datetime.now(UTC)
            for session in list(self.sessions.values()):
                session.check(now)

    def _admit(self) -> bool:
        """Whether one more viewer may authenticate (`[limits] max_peers`)."""
        served = sum(1 for s in self.sessions.values() if s.granted is not None)
        return served < self.settings.limits.max_peers

    def _update_status(self) -> None:
        self.notifier.status(self.status_text())

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            self._update_status()

    # ----- signaling
    def _on_signaling_state(self, connected: bool) -> None:
        self._signaling_changed = time.monotonic()
        if connected:
            logger.info("registered as %s at %s", self.label, self.settings.signaling.url)
            self.registered.set()
        else:
            self.registered.clear()
            logger.warning("signaling link down: %s", self.signaling.last_error)
        if not self._attempted:
            self._attempted = True
            self.notifier.ready(self.status_text())
        else:
            self._update_status()

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
        if self.stopping:
            logger.info("refusing %s: shutting down", peer)
            await self.signaling.send("bye", peer, {"reason": "device is shutting down"})
            return
        if old := self.sessions.get(peer):
            if old.is_ice_restart(offer):
                await self._restart_ice(old, offer)
                return
            await old.close()  # the viewer restarted its connection
        # max_peers bounds authenticated viewers (auth-error too-many-peers) and, separately,
        # connections still in their handshake, so strangers cannot crowd viewers out.
        max_peers = self.settings.limits.max_peers
        pending = sum(1 for s in self.sessions.values() if s.granted is None)
        if pending >= max_peers:
            logger.warning("refusing %s: %d peers are authenticating", peer, pending)
            await self.signaling.send(
                "bye", peer, {"reason": f"busy: {pending} viewers are connecting, try again"}
            )
            return
        assert self._router is not None
        session = PeerSession(
            peer, self.settings, self._router, self._forget, backend=self.backend,
            viewers=self.viewers, refresh_viewers=self._refresh_viewers, admit=self._admit,
            packing=self.packing,
        )
        self.sessions[peer] = session
        try:
            answer = await session.accept(offer)
        except Exception as exc:
            logger.warning("%r: bad offer: %s", session, exc)
            await self._end(session, f"bad offer: {exc}")
            return
        await self.signaling.send("answer", peer, answer)
        logger.info("%r: answered (%d peers)", session, len(self.sessions))
        self._update_status()

    async def _restart_ice(self, session: PeerSession, offer: dict[str, Any]) -> None:
        """Answer a viewer's ICE-restart offer on its live session. A session that cannot
        restart (the native backend, ICE already closed) is ended with a `bye`: the viewer's
        DTLS association would never handshake with a new connection, so it must make one."""
        try:
            answer = await session.restart_ice(offer)
        except IceRestartError as exc:
            logger.info("%r: no ICE restart (%s): the viewer must connect anew", session, exc)
            await self._end(session, f"{exc}; reconnect")
            return
        except Exception as exc:
            logger.warning("%r: bad ICE-restart offer: %s", session, exc)
            await self._end(session, f"bad offer: {exc}")
            return
        await self.signaling.send("answer", session.peer_id, answer)
        logger.info("%r: answered an ICE restart", session)

    async def _on_addresses_changed(self, old: frozenset[str], new: frozenset[str]) -> None:
        """Reconnect to the signaling server from the new address, then ask every viewer to
        restart ICE (a `restart` message; the viewer offers, we answer with candidates on the
        new addresses). A viewer whose restart does not complete within ICE_RESTART_WAIT gets
        the fallback: `bye`, and it connects anew."""
        logger.warning("host addresses changed (%s -> %s): restarting ICE with %d viewers",
                       ", ".join(sorted(old)) or "none", ", ".join(sorted(new)) or "none",
                       len(self.sessions))
        restarts = {s: s.ice_restarts for s in self.sessions.values()}
        self.registered.clear()
        self.signaling.reconnect()
        try:
            async with asyncio.timeout(RENEGOTIATE_WAIT):
                await self.registered.wait()
        except TimeoutError:
            logger.warning("not registered again within %.0f s; viewers will notice by "
                           "heartbeats", RENEGOTIATE_WAIT)
        await asyncio.gather(*(self._ask_restart(s, n) for s, n in restarts.items()))

    async def _ask_restart(self, session: PeerSession, since: int) -> None:
        """Ask one viewer to restart ICE; renegotiate (bye, close) if it does not, or at once
        where our backend cannot restart."""
        if session.restarts_ice:
            with contextlib.suppress(Exception):
                await self.signaling.send("restart", session.peer_id,
                                          {"reason": "device network changed"})
            if await session.wait_ice_restart(since, ICE_RESTART_WAIT):
                return
        if session.closed:
            return  # the viewer connected anew meanwhile
        logger.warning("%r: no ICE restart: renegotiating", session)
        await self._end(session, "device network changed; reconnect")

    async def _end(self, session: PeerSession, reason: str) -> None:
        """Close `session` and tell its viewer why (a `bye`: it connects anew, if at all)."""
        await session.close()
        try:
            await self.signaling.send("bye", session.peer_id, {"reason": reason})
        except Exception as exc:  # signaling is down: the viewer notices by heartbeats
            logger.debug("%r: bye not sent: %s", session, exc)

    def _forget(self, session: PeerSession) -> None:
        if self.sessions.get(session.peer_id) is session:
            del self.sessions[session.peer_id]
            self._update_status()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_sessions(self) -> None:
        sessions = list(self.sessions.values())
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


class DaemonPanelSource:
    """The running daemon as the panel sees it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def status_text(self) -> str:
        return self.daemon.status_text()

    def panel_identity(self) -> dict[str, str]:
        return {"device_id": self.daemon.device_id,
                "fingerprint": self.daemon.identity.fingerprint,
                "name": self.daemon.settings.device.name or ""}

    def panel_services(self) -> dict[str, str]:
        return {n: s.upstream for n, s in self.daemon.settings.services.items()}

    def panel_backend(self) -> dict[str, str]:
        return {"name": self.daemon.backend, "why": self.daemon.backend_reason}

    async def panel_peers(self) -> list[PeerRow]:
        rows = []
        for session in list(self.daemon.sessions.values()):
            report = await session.report()
            rows.append(PeerRow(
                peer=session.peer_id,
                viewer=session.granted.viewer if session.granted else None,
                path=f"{report.type} ({report.protocol})" if report else "connecting",
                rtt_ms=report.rtt_ms if report else None,
                open_streams=session.open_streams,
            ))
        return rows

    def panel_viewers(self) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        store = self.daemon.viewers
        return [{"name": r.name, "service": r.service, "created": format_time(r.created),
                 "expires": format_time(r.expires), "state": r.state(now)}
                for r in sorted(store.records.values(), key=lambda r: r.name)]

    def panel_share(self, service: str, name: str, expires: str) -> str:
        daemon = self.daemon
        try:
            shared = sharing.share(
                daemon.settings, daemon.viewers, device_id=daemon.device_id,
                fingerprint=daemon.identity.fingerprint_bytes, service=service, name=name,
                expires=expires, now=datetime.now(UTC),
            )
        except ViewerStoreError as exc:
            raise ValueError(str(exc)) from None
        return shared.link

    def panel_revoke(self, name: str) -> None:
        try:
            self.daemon.viewers.revoke(name, now=datetime.now(UTC))
        except ViewerStoreError:
            raise KeyError(name) from None
