"""rtc/patches/aioice_follow.py: the controlled side moves to the pair the controlling agent
nominates later, also when its own check of that pair was cut short by the end of ICE.

Two real aioice connections on loopback: the controlling one has a host candidate on
127.0.0.1 (path 1) and one on 127.0.0.2 (path 2); the controlled one has one on 127.0.0.1.
Path 2 first drops everything arriving at the controlling end (a cone NAT before its mapping
opens), so ICE completes on path 1 while the controlled end's check of path 2 is still being
retransmitted. Then path 2 opens, the controlling end nominates it (as Chromium does when it
switches to the direct pair), and path 1 starts dropping: only an end that followed still
reaches the other.

The last test is the daemon's side (device/peer.py): a real Daemon and aiortc viewer, the
viewer moves to its other address, the daemon logs the new pair and forwards that address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioice
import aioice.ice
import pytest
from aioice import Candidate
from aioice.ice import CandidatePair, Connection, StunProtocol

from peerproxyd.rtc.aiortc_setup import _ice_connection
from peerproxyd.rtc.patches import aioice_follow
from peerproxyd.rtc.transport import choose_backend
from tests.trust.test_trust import ICE, Stack, Viewer, _stack

PATH_1, PATH_2 = "127.0.0.1", "127.0.0.2"


@pytest.fixture
def patched() -> Iterator[None]:
    before = aioice.ice.Connection.__dict__["check_incoming"]
    aioice_follow.install()
    yield
    aioice.ice.Connection.check_incoming = before  # type: ignore[method-assign]


@pytest.fixture
def stock() -> Iterator[None]:
    before = aioice.ice.Connection.__dict__["check_incoming"]
    aioice_follow.install(False)
    yield
    aioice.ice.Connection.check_incoming = before  # type: ignore[method-assign]


class Gate:
    """Drops the datagrams arriving at one socket of a connection while closed."""

    def __init__(self, conn: Connection, host: str) -> None:
        [self.protocol] = [p for p in conn._protocols if p.local_candidate.host == host]
        self.open = True
        receive = self.protocol.datagram_received

        def datagram_received(data: Any, addr: tuple[Any, ...]) -> None:
            if self.open:
                receive(data, addr)

        self.protocol.datagram_received = datagram_received  # type: ignore[method-assign]


async def gathered(hosts: list[str], controlling: bool,
                   monkeypatch: pytest.MonkeyPatch) -> Connection:
    """A connection with host candidates on `hosts` (127.0.0.2 is loopback too on Linux,
    though no interface lists it, so aioice_tuning's allow list would drop it)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: hosts)
    conn = aioice.Connection(ice_controlling=controlling)
    await conn.gather_candidates()
    return conn


def path(pair: CandidatePair) -> str:
    """Which path `pair` is (the controlling end's address on it), seen from either end."""
    return PATH_2 if PATH_2 in (pair.local_candidate.host, pair.remote_candidate.host) else PATH_1


def selected(conn: Connection) -> str:
    """The path `conn` sends on."""
    return path(conn._nominated[1])


def pair_on(conn: Connection, host: str) -> CandidatePair | None:
    pairs = [p for p in conn._check_list if path(p) == host]
    return pairs[0] if pairs else None


def nominate(conn: Connection, protocol: StunProtocol, remote: Candidate) -> None:
    """What a controlling agent that switches pairs does (Chromium does, aioice does not):
    check the pair again, with USE-CANDIDATE, and send on it once that succeeds."""
    pair = conn._find_pair(protocol, remote) or CandidatePair(protocol, remote)
    if pair not in conn._check_list:  # the unchecked pairs went when ICE completed
        conn._check_list.append(pair)
    pair.task = None
    conn.check_start_task(pair)


async def wait_for(condition: Any, timeout: float) -> bool:
    """Poll `condition()` every 20 ms for at most `timeout` seconds."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return bool(condition())


async def switch_after_ice(monkeypatch: pytest.MonkeyPatch, *, follows: bool) -> None:
    controlling = await gathered([PATH_1, PATH_2], True, monkeypatch)
    controlled = await gathered([PATH_1], False, monkeypatch)
    try:
        path_2 = Gate(controlling, PATH_2)
        path_2.open = False
        for x, y in ((controlling, controlled), (controlled, controlling)):
            for candidate in y.local_candidates:
                await x.add_remote_candidate(candidate)
            await x.add_remote_candidate(None)
            x.remote_username, x.remote_password = y.local_username, y.local_password
        # The controlled end checks both paths first, so its check of path 2 is under way
        # (unanswered) when the controlling end's nomination of path 1 ends ICE.
        controlled_done = asyncio.create_task(controlled.connect())
        assert await wait_for(
            lambda: getattr(pair_on(controlled, PATH_2), "state", None)
            == CandidatePair.State.IN_PROGRESS, 5)
        await asyncio.wait_for(asyncio.gather(controlling.connect(), controlled_done), 10)
        assert selected(controlled) == PATH_1
        # connect() cancelled that check and left the pair In-Progress with its dead task.
        stuck = pair_on(controlled, PATH_2)
        assert stuck is not None
        assert await wait_for(lambda: stuck.task is not None and stuck.task.done(), 1)
        assert stuck.state == CandidatePair.State.IN_PROGRESS

        # The controlling end switches to path 2 and nominates it; path 1 goes quiet.
        path_2.open = True
        nominate(controlling, path_2.protocol, controlling.remote_candidates[0])
        assert await wait_for(lambda: selected(controlling) == PATH_2, 5)
        Gate(controlling, PATH_1).open = False

        followed = await wait_for(lambda: selected(controlled) == PATH_2, 3)
        assert followed is follows, controlled._nominated
        if follows:
            await controlled.send(b"through path 2")
            assert await asyncio.wait_for(controlling.recv(), 5) == b"through path 2"
    finally:
        await controlling.close()
        await controlled.close()


async def test_why_stock_aioice_keeps_the_first_pair(
    stock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stock aioice notes the nomination of path 2 but never checks it again: it keeps
    sending on path 1 (fails here once aioice revives cancelled checks itself)."""
    await switch_after_ice(monkeypatch, follows=False)


async def test_the_controlled_end_follows_a_later_nomination(
    patched: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    await switch_after_ice(monkeypatch, follows=True)


def test_what_the_patch_replaces_is_still_there() -> None:
    """Fails when aioice renames what aioice_follow builds on."""
    assert aioice_follow._ORIGINAL_CHECK_INCOMING.__name__ == "check_incoming"
    assert callable(Connection._find_pair) and callable(Connection.check_start_task)


# ----- the daemon notices (device/peer.py)


@pytest.fixture
async def daemon_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A real Daemon and signaling server (tests/trust/test_trust.py), our patches installed."""
    if choose_backend("auto", ICE)[0] != "aiortc":  # Python >= 3.12 with the native extra
        pytest.skip("the daemon's ICE would be libjuice (native backend), not the patched "
                    "aioice, and its host candidates ignore this test's second address")
    async for stack in _stack(tmp_path):
        yield stack


async def test_the_daemon_logs_the_new_pair_and_the_viewers_new_address(
    daemon_stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An aiortc viewer (controlling) with host candidates on both paths moves the session to
    its other address: the daemon follows, logs `now connected via` and forwards the new
    address (X-Forwarded-For)."""
    caplog.set_level(logging.INFO, logger="peerproxyd.device.peer")
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [
        PATH_1, PATH_2])  # after _stack's configure_ice, for the daemon and the viewer
    token = daemon_stack.share("alice")
    viewer = Viewer(daemon_stack.signal_url, daemon_stack.daemon.device_id)
    try:
        await viewer.open()
        await viewer.login("alice", token)
        assert await viewer.get() == (200, b"hello from camera\n")
        [session] = daemon_stack.daemon.sessions.values()
        assert await wait_for(lambda: session.viewer_address is not None, 5)
        first = session.viewer_address
        ice = _ice_connection(viewer.pc)
        [other] = [p for p in ice._protocols if p.local_candidate.host != first]

        nominate(ice, other, ice._nominated[1].remote_candidate)
        assert await wait_for(lambda: session.viewer_address == other.local_candidate.host, 5)
        [line] = [r.getMessage() for r in caplog.records if "now connected via" in r.getMessage()]
        assert f"<-> {other.local_candidate.host}:{other.local_candidate.port} [host]" in line
        assert session.path == "host"
        assert await viewer.get() == (200, b"hello from camera\n")
    finally:
        await viewer.close()
