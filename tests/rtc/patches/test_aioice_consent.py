"""aioice_consent: a peer that answers consent checks late keeps its connection; one that
stops answering loses it. Two real aioice connections on 127.0.0.1; the answering side's STUN
responses are held back for a while, as a peer busy with a bulk transfer would answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aioice.ice
import pytest
from aioice import stun
from aioice.ice import Connection

from peerproxyd.rtc.patches import aioice_consent, aioice_tuning

INTERVAL = 0.3
LATE = 0.8
"""Seconds the busy peer takes to answer: more than aioice's 500 ms, less than ours allows."""


@pytest.fixture
def fast_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", INTERVAL)
    monkeypatch.setattr(aioice_consent, "CONSENT_INTERVAL", INTERVAL)
    monkeypatch.setattr(aioice_consent, "CONSENT_TIMEOUT", 3.0)
    monkeypatch.setattr(aioice_consent, "CHECK_RETRANSMISSIONS", 1)  # 0.5 + 1 s per check
    aioice_tuning.configure(host_addresses=["127.0.0.1"])


@pytest.fixture
async def pair(fast_checks: None) -> AsyncIterator[tuple[Connection, Connection]]:
    a = Connection(ice_controlling=True, components=1)
    b = Connection(ice_controlling=False, components=1)
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    for near, far in ((a, b), (b, a)):
        near.remote_username, near.remote_password = far.local_username, far.local_password
        for candidate in far.local_candidates:
            await near.add_remote_candidate(candidate)
        await near.add_remote_candidate(None)
    async with asyncio.timeout(10):
        await asyncio.gather(a.connect(), b.connect())
    try:
        yield a, b
    finally:
        await asyncio.gather(a.close(), b.close())


def answer_late(peer: Connection, delay: float | None) -> None:
    """Hold back `peer`'s STUN responses by `delay` seconds (None: never answer)."""
    loop = asyncio.get_running_loop()
    for pair in peer._nominated.values():
        protocol = pair.protocol
        send = protocol.send_stun

        def held(message: stun.Message, addr: tuple[str, int], send=send) -> None:
            if message.message_class != stun.Class.RESPONSE:
                send(message, addr)
            elif delay is not None:
                loop.call_later(delay, send, message, addr)

        protocol.send_stun = held  # type: ignore[method-assign]


def restart_consent(connection: Connection) -> None:
    """connect() started the checks with whatever was installed then: start them again."""
    assert connection._query_consent_task is not None
    connection._query_consent_task.cancel()
    connection._query_consent_task = asyncio.create_task(connection.query_consent())


async def closed_within(connection: Connection, seconds: float) -> bool:
    for _ in range(int(seconds / 0.1)):
        if not connection._nominated:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_stock_aioice_drops_a_peer_that_answers_late(pair: tuple[Connection, Connection]):
    """The problem: six late answers in a row and aioice closes a healthy connection."""
    aioice_consent.uninstall()
    a, b = pair
    restart_consent(a)
    answer_late(b, LATE)
    assert await closed_within(a, 8.0)


@pytest.fixture
def consent_fix() -> Iterator[None]:
    """aioice_consent installed for one test."""
    aioice_consent.install()
    try:
        yield
    finally:
        aioice_consent.uninstall()


async def test_late_answers_keep_the_connection(
    pair: tuple[Connection, Connection], consent_fix: None
):
    a, b = pair
    restart_consent(a)
    answer_late(b, LATE)
    assert not await closed_within(a, 8.0)  # 3 s timeout, many late checks meanwhile
    await a.send(b"still here")
    async with asyncio.timeout(5):
        assert await b.recv() == b"still here"


async def test_a_peer_that_never_answers_expires(
    pair: tuple[Connection, Connection], consent_fix: None
):
    a, b = pair
    restart_consent(a)
    answer_late(b, None)
    assert await closed_within(a, 10.0)  # 3 s timeout + a check (1.5 s) + an interval
