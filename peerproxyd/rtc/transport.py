"""The peer connection the daemon and the native client use, behind one interface (issue 7).

Two backends: `aiortc` (transport_aiortc.py; always installed, the only one on Python 3.11)
and `native` (transport_native.py; libdatachannel-py, the `peerproxyd[native]` extra on
Python >= 3.12, ~4x less CPU per MB: bench/datachannel.md). `[transport] backend` (the
daemon) and `connect --backend` (the native client) choose once per process: "aiortc",
"native", or "auto" (native when importable and the ICE settings are ones it supports, else
aiortc; `choose_backend` says why).

A transport makes one peer connection with one data channel that satisfies
`peerproxyd.tunnel.channel.DataChannel`. Offerer: `create_channel`, `offer`, `set_answer`.
Answerer: `on_channel`, `answer`. Both: `add_candidate` (a trickled browser candidate),
`on_state` (aiortc's connectionState names), `report`, `close`; ICE restart on the live
connection (docs/network.md): offerer `restart_offer` + `finish_restart`, answerer
`restart_answer` (IceRestartError where a backend cannot restart). SDPs are whole strings with
every local candidate gathered, so signaling and the DTLS fingerprint checks of viewer auth
(docs/security.md 1.5) read them as before.

Nothing here imports a backend: `configure_ice`, `device_identity` and `new_transport` import
the chosen one when called, so a process loads only the WebRTC stack it runs on (issue 15:
the signaling server loads neither, a native daemon or client no aiortc).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, Protocol

from peerproxyd.config import IceSettings
from peerproxyd.rtc.report import ConnectionReport
from peerproxyd.tunnel.channel import DataChannel

if TYPE_CHECKING:
    from peerproxyd.rtc.aiortc_ice_restart import IceRestart
    from peerproxyd.trust.identity import Identity  # cryptography: where a key is used

logger = logging.getLogger(__name__)

Backend = Literal["aiortc", "native"]

CHANNEL_LABEL = "peerproxy"
"""The label of the one data channel a viewer opens to the device."""


class Transport(Protocol):
    backend: Backend
    restarts_ice: bool

    @property
    def state(self) -> str:
        """new, connecting, connected, disconnected, failed or closed."""
        ...

    def on_state(self, callback: Callable[[str], None]) -> None: ...

    def on_channel(self, callback: Callable[[Any], None]) -> None:
        """Answerer: `callback(channel)` on the loop when the remote's channel arrives."""
        ...

    def create_channel(self, label: str) -> Any:
        """Offerer: the ordered, reliable data channel (before `offer`)."""
        ...

    async def offer(self) -> str: ...

    async def answer(self, offer_sdp: str) -> str: ...

    async def set_answer(self, answer_sdp: str) -> None: ...

    async def add_candidate(self, payload: dict[str, Any]) -> None: ...

    async def report(self, *, measure_rtt: bool = True) -> ConnectionReport | None: ...

    async def close(self) -> None: ...

    async def restart_offer(self) -> tuple[str, IceRestart]:
        """Offerer: an ICE-restart offer for the live connection, and the restart."""
        ...

    async def finish_restart(self, restart: IceRestart, answer_sdp: str) -> bool:
        """Offerer: apply the answer; True once the new pair carries the connection."""
        ...

    async def restart_answer(self, offer_sdp: str) -> tuple[str, IceRestart]:
        """Answerer: our answer to a restart offer, and the running restart."""
        ...


EXIT_CLOSE_WAIT = 2.0
"""Seconds a process's exit waits for native connections still closing (exit_code)."""


def exit_code(code: int) -> int:
    """`code`, once the native backend's connections have closed; if some are still closing
    after EXIT_CLOSE_WAIT (a viewer that vanished: its SCTP shutdown times out after ~13 s),
    exit with `code` at once, skipping libdatachannel's C++ destructors, which would abort
    the process. For the command line's exit only (it may end the process)."""
    native = sys.modules.get("peerproxyd.rtc.transport_native")
    if native is None or not (left := native.wait_for_closes(EXIT_CLOSE_WAIT)):
        return code
    logger.info("exiting with %d native connection(s) still closing", left)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def native_available() -> bool:
    """libdatachannel-py is importable (Python >= 3.12 with the `native` extra)."""
    return importlib.util.find_spec("libdatachannel") is not None


def native_unsupported(ice: IceSettings) -> str | None:
    """Why the native backend cannot honour these ICE settings, or None."""
    if len(ice.host_addresses) > 1:
        return "it binds at most one host address (host_addresses has several)"
    for url in (url for server in ice.servers for url in server.urls):
        # libjuice relays over UDP only: such a TURN server would never be used.
        if url.startswith("turns:") or (url.startswith("turn:") and "transport=tcp" in url):
            return f"it has no TURN over TCP or TLS ({url})"
    return None


def choose_backend(wanted: str, ice: IceSettings) -> tuple[Backend, str]:
    """The backend for `wanted` ("auto", "aiortc" or "native") with these ICE settings, and
    why; ValueError when "native" cannot run here."""
    if wanted == "aiortc":
        return "aiortc", "configured"
    problem = None if native_available() else (
        "libdatachannel-py is not installed (the peerproxyd[native] extra: Python >= 3.12 on "
        "x86_64 or aarch64)")
    problem = problem or native_unsupported(ice)
    if wanted == "native":
        if problem:
            raise ValueError(f'"native" cannot run here: {problem}')
        return "native", "configured"
    if problem:
        return "aiortc", f"auto: native unavailable ({problem})"
    return "native", "auto: libdatachannel-py importable"


def configure_ice(ice: IceSettings, backend: Backend) -> None:
    """Apply the process-wide ICE settings for `backend` (the daemon and the native client
    call this once, before their first connection). aiortc: aiortc_setup.configure_ice, every
    setting and fix. native: libdatachannel takes its settings per connection; only aioice's
    host address list and mDNS fix are set, for what mdns.py does with aioice on either
    backend (our `.local` names, resolving a browser's, the LAN addresses advertised)."""
    if backend == "aiortc":
        from peerproxyd.rtc import aiortc_setup

        aiortc_setup.configure_ice(ice)
        return
    from peerproxyd.rtc.patches import aioice_mdns, aioice_tuning

    aioice_tuning.configure(
        host_addresses=ice.host_addresses, receive_buffer=ice.udp_receive_buffer
    )
    aioice_mdns.install()


_device: ContextVar[Identity | None] = ContextVar("peerproxyd_device_identity", default=None)


@contextmanager
def device_identity(identity: Identity, backend: Backend) -> Iterator[None]:
    """Every connection made in this context (and in tasks started from it) on `backend`
    presents the identity's DTLS certificate (viewers pin its fingerprint, docs/security.md
    1.5): aiortc through aiortc_certificate.device_certificate, native through
    `new_transport`. The daemon runs inside one."""
    with ExitStack() as stack:
        if backend == "aiortc":
            from peerproxyd.rtc.patches.aiortc_certificate import device_certificate

            stack.enter_context(device_certificate(identity))
        token = _device.set(identity)
        stack.callback(_device.reset, token)
        yield


def new_transport(
    ice: IceSettings, *, backend: Backend, identity: Identity | None = None
) -> Transport:
    """A transport for one peer connection on `backend` (from `choose_backend`).
    `identity`: the device's DTLS certificate; None: the identity of the enclosing
    `device_identity` context (the daemon runs in one), else a fresh certificate per
    connection (the native client)."""
    if backend == "native":
        from peerproxyd.rtc.transport_native import NativeTransport

        return NativeTransport(ice, identity=identity or _device.get())
    from peerproxyd.rtc.transport_aiortc import AiortcTransport

    return AiortcTransport(ice)


__all__ = ["CHANNEL_LABEL", "Backend", "DataChannel", "Transport", "choose_backend",
           "configure_ice", "device_identity", "native_available", "new_transport"]
