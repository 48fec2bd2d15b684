"""peerproxyd.rtc.patches.aiortc_certificate: every peer connection of the daemon presents the
device's DTLS certificate (docs/security.md 1.1), across connections and restarts; everyone else
still gets a fresh one."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from peerproxyd.rtc.patches.aiortc_certificate import certificate_of, device_certificate
from peerproxyd.trust.identity import Identity, identity_exists, load
from tests.support.rawpeer import RawPeer
from tests.support.stack import Stack

FINGERPRINT = re.compile(r"^a=fingerprint:sha-256 ([0-9A-F:]{95})\r?$", re.M)


def certificates(pc: RTCPeerConnection) -> list[object]:
    """The certificates aiortc 1.16 keeps per connection (a private attribute: if aiortc
    renames it, this test fails and aiortc_certificate.py needs a look)."""
    return pc._RTCPeerConnection__certificates  # type: ignore[attr-defined, no-any-return]


def fingerprints(sdp: str) -> list[str]:
    return FINGERPRINT.findall(sdp)


async def test_connections_in_the_context_use_the_device_certificate() -> None:
    ident = Identity.generate()
    with device_certificate(ident) as certificate:
        pcs = [RTCPeerConnection(), RTCPeerConnection()]
        # A task started in the context (the daemon's signaling loop) inherits it.
        pcs.append(await asyncio.create_task(_new_pc()))
    outside = [RTCPeerConnection(), RTCPeerConnection()]
    try:
        for pc in pcs:
            assert certificates(pc) == [certificate]
            pc.createDataChannel("x")
            await pc.setLocalDescription(await pc.createOffer())
            assert fingerprints(pc.localDescription.sdp) == [ident.fingerprint]
        fresh = {id(certificates(pc)[0]) for pc in outside}
        assert len(fresh) == 2 and id(certificate) not in fresh
    finally:
        await asyncio.gather(*(pc.close() for pc in pcs + outside))


async def test_a_task_started_outside_keeps_fresh_certificates() -> None:
    ident = Identity.generate()
    started = asyncio.Event()
    release = asyncio.Event()

    async def other() -> RTCPeerConnection:
        started.set()
        await release.wait()
        return RTCPeerConnection()  # made while the daemon's context is active elsewhere

    task = asyncio.create_task(other())
    await started.wait()
    with device_certificate(ident) as certificate:
        release.set()
        pc = await task
    try:
        assert certificates(pc) != [certificate]
    finally:
        await pc.close()


def test_certificate_of_is_the_identitys() -> None:
    ident = Identity.generate()
    [sha256] = [f for f in certificate_of(ident).getFingerprints() if f.algorithm == "sha-256"]
    assert sha256.value == ident.fingerprint


@pytest.fixture
def stack(tmp_path: Path):
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.stop()


async def answer_fingerprints(signal_url: str, link: str) -> tuple[list[str], list[str]]:
    """(device's, viewer's) sha-256 fingerprints of one real connection, after a request."""
    async with RawPeer(signal_url, link) as peer:
        head, body = await peer.request("camera", "/")
        assert (head.status, body) == (200, b"hello from camera\n")
        return fingerprints(peer.answer), fingerprints(peer.offer)


async def test_daemon_answers_with_its_fingerprint_across_connections_and_restarts(stack: Stack):
    stack.upstream("camera")
    stack.signal()
    daemon = stack.daemon({"camera": stack.upstream_ports["camera"]})
    expected = [load(stack.state_dir).fingerprint]
    assert f"DTLS fingerprint sha-256 {expected[0]}" in daemon.log()
    first, viewer1 = await answer_fingerprints(stack.signal_url, stack.link("camera"))
    second, viewer2 = await answer_fingerprints(stack.signal_url, stack.link("camera"))
    assert first == second == expected
    assert viewer1 != viewer2 and viewer1 != expected  # viewers: a fresh one every time

    daemon.stop()
    stack.daemon({"camera": stack.upstream_ports["camera"]}).wait_for_log(
        "registered as", count=2)  # the same log file: the restarted daemon's line
    again, _ = await answer_fingerprints(stack.signal_url, stack.link("camera"))
    assert again == expected
    assert identity_exists(stack.state_dir)


async def _new_pc() -> RTCPeerConnection:
    return RTCPeerConnection()
