"""peerproxyd.rtc.transport: both backends, and every pairing of them, on loopback (issue 7).

The native backend needs libdatachannel-py (Python >= 3.12, `peerproxyd[native]`); its tests
skip with that reason elsewhere (`make test-native` runs them under python3.13)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path

import pytest

from peerproxyd.config import (
    DeviceSettings,
    IceSettings,
    ServiceSettings,
    Settings,
    SignalingSettings,
    TransportSettings,
)
from peerproxyd.device.daemon import Daemon
from peerproxyd.errors import ConfigError
from peerproxyd.rtc.aiortc_setup import configure_ice
from peerproxyd.rtc.transport import (
    Transport,
    choose_backend,
    native_available,
    native_unsupported,
    new_transport,
)
from peerproxyd.trust.identity import Identity
from peerproxyd.tunnel.channel import HIGH_WATER, LOW_WATER

needs_native = pytest.mark.skipif(
    not native_available(), reason="libdatachannel-py not importable (needs Python >= 3.12 and "
    "the native extra; `make test-native`)")
ICE = IceSettings(host_addresses=["127.0.0.1"], mdns=False)
PAIRS = [("aiortc", "aiortc"),
         pytest.param("native", "native", marks=needs_native),
         pytest.param("native", "aiortc", marks=needs_native),
         pytest.param("aiortc", "native", marks=needs_native)]
MESSAGE = 16 * 1024


async def connect(offerer: Transport, answerer: Transport) -> tuple[object, object]:
    """Offer/answer between two transports; both ends of the open channel."""
    arrived: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    answerer.on_channel(lambda ch: arrived.done() or arrived.set_result(ch))
    channel = offerer.create_channel("peerproxy")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    answer = await answerer.answer(await offerer.offer())
    await offerer.set_answer(answer)
    async with asyncio.timeout(20):
        await opened.wait()
        remote = await arrived
    return channel, remote


async def move(sender: object, receiver: object, total: int) -> None:
    """`total` bytes in sequence-numbered messages with peerproxyd's backpressure; the
    receiver checks order and count."""
    got: list[int] = []
    done = asyncio.Event()
    expected = -(-total // MESSAGE)

    def on_message(message: bytes) -> None:
        got.append(int.from_bytes(message[:8], "big"))
        if len(got) == expected:
            done.set()

    receiver.on("message", on_message)  # type: ignore[attr-defined]
    low = asyncio.Event()
    sender.bufferedAmountLowThreshold = LOW_WATER  # type: ignore[attr-defined]
    sender.on("bufferedamountlow", low.set)  # type: ignore[attr-defined]
    block = bytearray(os.urandom(MESSAGE))
    waited = 0
    async with asyncio.timeout(120):
        for seq in range(expected):
            if sender.bufferedAmount > HIGH_WATER:  # type: ignore[attr-defined]
                low.clear()
                waited += 1
                await low.wait()
            block[:8] = seq.to_bytes(8, "big")
            sender.send(bytes(block))  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        await done.wait()
    assert got == list(range(expected))


@pytest.fixture(autouse=True)
def _loopback_ice() -> None:
    configure_ice(ICE)


@pytest.mark.parametrize(("offer_backend", "answer_backend"), PAIRS)
async def test_pairing_moves_data_both_ways_intact(offer_backend: str, answer_backend: str):
    offerer = new_transport(ICE, backend=offer_backend)  # type: ignore[arg-type]
    answerer = new_transport(ICE, backend=answer_backend)  # type: ignore[arg-type]
    try:
        local, remote = await connect(offerer, answerer)
        assert local.readyState == remote.readyState == "open"  # type: ignore[attr-defined]
        await move(local, remote, 4 * 1024 * 1024)
        await move(remote, local, 4 * 1024 * 1024)
        for transport in (offerer, answerer):
            report = await transport.report()
            assert report is not None and report.type == "host"
            assert report.backend == transport.backend
            assert str(report).endswith(f", backend {transport.backend}")
            assert report.local.startswith("127.0.0.1:")
            assert transport.state == "connected"
        closed = asyncio.Event()
        remote.on("close", closed.set)  # type: ignore[attr-defined]
        await offerer.close()
        async with asyncio.timeout(30):
            await closed.wait()
        assert remote.readyState == "closed"  # type: ignore[attr-defined]
    finally:
        await offerer.close()
        await answerer.close()


@needs_native
async def test_native_answers_with_the_device_certificate():
    """Viewers pin the device's DTLS fingerprint (docs/security.md 1.5): a native daemon
    connection presents the identity's certificate, and the offerer sees that fingerprint."""
    identity = Identity.generate()
    daemon = new_transport(ICE, identity=identity, backend="native")
    viewer = new_transport(ICE, backend="aiortc")
    try:
        channel = viewer.create_channel("peerproxy")
        opened = asyncio.Event()
        channel.on("open", opened.set)
        answer = await daemon.answer(await viewer.offer())
        assert f"a=fingerprint:sha-256 {identity.fingerprint}" in answer
        await viewer.set_answer(answer)
        async with asyncio.timeout(20):
            await opened.wait()
    finally:
        await viewer.close()
        await daemon.close()


@needs_native
async def test_native_refuses_a_bad_offer_and_keeps_working():
    transport = new_transport(ICE, backend="native")
    try:
        with pytest.raises(ValueError, match="unusable offer"):
            await transport.answer("v=0\r\nthis is not sdp\r\n")
    finally:
        await transport.close()
    a, b = new_transport(ICE, backend="native"), new_transport(ICE, backend="native")
    try:
        local, remote = await connect(a, b)
        await move(local, remote, 64 * 1024)
    finally:
        await a.close()
        await b.close()


def test_choose_backend():
    assert choose_backend("aiortc", ICE) == ("aiortc", "configured")
    several = IceSettings(host_addresses=["127.0.0.1", "127.0.0.2"])
    assert choose_backend("auto", several)[0] == "aiortc"
    with pytest.raises(ValueError, match="one host address" if native_available() else
                       "not installed"):
        choose_backend("native", several)
    if native_available():
        assert choose_backend("auto", ICE) == ("native", "auto: libdatachannel-py importable")
        assert choose_backend("native", ICE) == ("native", "configured")
        assert "one host address" in choose_backend("auto", several)[1]
    else:
        assert choose_backend("auto", ICE)[0] == "aiortc"
        with pytest.raises(ValueError, match="libdatachannel-py is not installed"):
            choose_backend("native", ICE)


def test_native_is_not_chosen_for_turn_over_tcp_or_tls():
    """libjuice relays over UDP only: with a TCP/TLS TURN server, "auto" keeps aiortc."""
    udp = IceSettings(servers=[{"urls": "turn:203.0.113.1:3478", "username": "u",
                                "credential": "c"}, {"urls": "stun:203.0.113.1"}])
    assert native_unsupported(udp) is None
    for url in ("turn:203.0.113.1:3478?transport=tcp", "turns:203.0.113.1:5349"):
        ice = IceSettings(servers=[{"urls": url, "username": "u", "credential": "c"}])
        assert native_unsupported(ice) == f"it has no TURN over TCP or TLS ({url})"
        assert choose_backend("auto", ice)[0] == "aiortc"


def test_daemon_refuses_a_native_backend_that_cannot_run(tmp_path: Path):
    """`[transport] backend = "native"` where it cannot run is a configuration error at start
    (two host addresses: the native stack binds one; without libdatachannel-py: not
    installed), not a silent fall-back."""
    settings = Settings(
        signaling=SignalingSettings(url="ws://127.0.0.1:9/ws"),
        services={"camera": ServiceSettings(upstream="http://127.0.0.1:9")},
        ice=IceSettings(host_addresses=["127.0.0.1", "127.0.0.2"]),
        transport=TransportSettings(backend="native"),
        device=DeviceSettings(state_dir=tmp_path),
    )
    with pytest.raises(ConfigError, match=r'transport\.backend: "native" cannot run here'):
        Daemon(settings, identity=Identity.generate())
    auto = Daemon(dataclasses.replace(settings, transport=TransportSettings()),
                  identity=Identity.generate())
    assert (auto.backend, auto.backend_reason[:5]) == ("aiortc", "auto:")


@needs_native
async def test_native_closes_a_channel_that_outruns_the_reader(caplog: pytest.LogCaptureFixture):
    """libdatachannel queues up to 2^20 received messages whatever their size: a reader that
    falls more than max_queued bytes behind closes the channel instead of growing without
    bound; the sender sees the close."""
    a, b = new_transport(ICE, backend="native"), new_transport(ICE, backend="native")
    try:
        local, remote = await connect(a, b)
        remote.max_queued = 256 * 1024  # type: ignore[attr-defined]
        remote.on("message", lambda m: time.sleep(0.002))  # type: ignore[attr-defined]
        closed, gave_up = asyncio.Event(), asyncio.Event()
        local.on("close", closed.set)  # type: ignore[attr-defined]
        remote.on("close", gave_up.set)  # type: ignore[attr-defined]
        block = os.urandom(MESSAGE)
        async with asyncio.timeout(60):
            for _ in range(512):  # 8 MiB, far more than the reader handles meanwhile
                if local.readyState != "open":  # type: ignore[attr-defined]
                    break
                local.send(block)  # type: ignore[attr-defined]
                await asyncio.sleep(0)
            await closed.wait()
            await gave_up.wait()
        assert remote.readyState == "closed"  # type: ignore[attr-defined]
        assert "sends faster than we can handle" in caplog.text
    finally:
        await a.close()
        await b.close()


@needs_native
@pytest.mark.parametrize("offer_backend", ["aiortc", "native"])
async def test_native_keeps_what_arrives_before_a_listener(offer_backend: str):
    """The viewer sends its auth (text) as soon as the channel opens, often before the daemon
    listens: a native channel keeps it queued until a "message" listener is set, and text
    and binary messages keep their type and order; remove_listener stops delivery."""
    offerer = new_transport(ICE, backend=offer_backend)  # type: ignore[arg-type]
    answerer = new_transport(ICE, backend="native")
    try:
        arrived: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        answerer.on_channel(arrived.set_result)
        local = offerer.create_channel("peerproxy")
        local.on("open", lambda: (local.send("auth"), local.send(b"\x00binary")))
        await offerer.set_answer(await answerer.answer(await offerer.offer()))
        async with asyncio.timeout(20):
            remote = await arrived
            while remote._dc.available_amount() < len("auth") + 7:  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)  # both are queued in libdatachannel
        got: list[bytes | str] = []
        first = asyncio.Event()

        def auth(message: bytes | str) -> None:
            got.append(message)
            remote.remove_listener("message", auth)  # type: ignore[attr-defined]
            remote.on("message", lambda m: (got.append(m), first.set()))  # type: ignore[attr-defined]

        remote.on("message", auth)  # type: ignore[attr-defined]
        async with asyncio.timeout(20):
            await first.wait()
        assert got == ["auth", b"\x00binary"]
    finally:
        await offerer.close()
        await answerer.close()


async def lossy_pairings() -> None:
    """Run inside a namespace with 5 % UDP loss (test below): every pairing with a native end
    moves 1 MB each way, every message in order."""
    configure_ice(ICE)
    for offer_backend, answer_backend in (("native", "native"), ("native", "aiortc"),
                                          ("aiortc", "native")):
        offerer = new_transport(ICE, backend=offer_backend)  # type: ignore[arg-type]
        answerer = new_transport(ICE, backend=answer_backend)  # type: ignore[arg-type]
        try:
            local, remote = await connect(offerer, answerer)
            await move(local, remote, 1_000_000)
            await move(remote, local, 1_000_000)
            print(f"{offer_backend}-{answer_backend} ok", flush=True)
        finally:
            await offerer.close()
            await answerer.close()
        async with asyncio.timeout(60):  # native closes on threads: let them end before exit
            while not local.readyState == remote.readyState == "closed":  # type: ignore
                await asyncio.sleep(0.05)


@needs_native
@pytest.mark.netns
@pytest.mark.timeout(300)
def test_native_survives_five_percent_loss(tmp_path: Path):
    """5 % of UDP datagrams dropped at random (iptables `statistic`, in a namespace of its
    own): data still arrives complete and in order for every pairing with a native end."""
    import subprocess
    import sys

    from tests.rtc.patches.test_aiortc_speedups import netns_reason

    if reason := netns_reason():
        pytest.skip(reason)
    from bench.datachannel import World

    world = World(tmp_path, chromium=False)
    try:
        world.up()
        world.drop_udp(0.05)
        result = subprocess.run(
            [*world.prefix(), sys.executable, "-c",
             "import asyncio, tests.rtc.test_transport as t; asyncio.run(t.lossy_pairings())"],
            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
            timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.split() == ["native-native", "ok", "native-aiortc", "ok",
                                         "aiortc-native", "ok"]
        assert world.dropped() > 0  # the loss was real
    finally:
        world.down()
