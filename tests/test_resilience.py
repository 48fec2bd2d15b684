"""Restarts: the daemon and the signaling server go away and come back; nothing needs a
manual reconnect."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.procs import free_port
from tests.support.stack import Stack


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path)
    yield stack
    stack.stop()


async def get_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=60)) as r:
            return r.status, await r.text()


async def test_daemon_restart_client_reconnects(stack: Stack):
    stack.upstream("camera")
    stack.signal()
    daemon = stack.daemon({"camera": stack.upstream_ports["camera"]})
    client, url = stack.client("camera")
    assert await get_text(url + "/") == (200, "hello from camera\n")

    daemon.stop()
    client.wait_for_log("reconnecting")
    stack.daemon({"camera": stack.upstream_ports["camera"]})
    # The next request waits for the new connection instead of failing.
    assert await get_text(url + "/") == (200, "hello from camera\n")
    client.wait_for_log(rf"connected to {stack.device}/camera", count=2)


async def test_signaling_restart_daemon_reregisters(stack: Stack):
    stack.upstream("camera")
    signal = stack.signal()
    daemon = stack.daemon({"camera": stack.upstream_ports["camera"]})
    signal.stop()
    daemon.wait_for_log("signaling link down")
    stack.signal()  # same port
    daemon.wait_for_log(f"registered as {stack.device}", count=2)
    # A viewer arriving after the restart reaches the device.
    _, url = stack.client("camera")
    assert await get_text(url + "/") == (200, "hello from camera\n")


async def test_device_offline_then_online(stack: Stack):
    """A client started before its device says why it waits, then connects when it appears."""
    stack.upstream("camera")
    stack.signal()
    port = free_port()
    client = stack._start("client-early", stack.connect_args("camera", port))
    client.wait_for_log(f"device {stack.device} is not online")
    stack.daemon({"camera": stack.upstream_ports["camera"]})
    client.wait_for_log("is at http", timeout=30)
    assert await get_text(f"http://127.0.0.1:{port}/") == (200, "hello from camera\n")


async def test_silent_peer_is_dropped_and_reconnects(stack: Stack):
    """HEARTBEATs: a viewer that stops answering (SIGSTOP) is closed by the daemon and its
    upstream request cancelled; once it runs again it notices and reconnects."""
    import asyncio
    import signal as signals

    stack.upstream("camera")
    stack.signal()
    daemon = stack.daemon({"camera": stack.upstream_ports["camera"]})
    client, url = stack.client("camera")
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{url}/download?size={500 * 1024 * 1024}")
        await response.content.readexactly(1024 * 1024)
        client.popen.send_signal(signals.SIGSTOP)
        try:
            daemon.wait_for_log(r"peer silent for \d+\.\d s, closing", timeout=20)
            daemon.wait_for_log(r"camera GET /download\?size=524288000 499", timeout=10)
        finally:
            client.popen.send_signal(signals.SIGCONT)
        response.close()
    client.wait_for_log(rf"connected to {stack.device}/camera", count=2, timeout=30)
    await asyncio.sleep(0)
    assert await get_text(url + "/") == (200, "hello from camera\n")
