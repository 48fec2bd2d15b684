"""Every HTTP listener against a raw TCP client on loopback. Slowloris: a request head sent
one byte at a time that never ends; the listener closes the connection once its head timeout
has passed, and serves a normal client meanwhile. Oversized heads: 400, and the next client is
served. Real processes: `peerproxyd signal` (its `[limits] head_timeout` from a config file),
the daemon's status panel and the native client's local port (both with their fixed 10 s)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from peerproxyd.client import native
from peerproxyd.device import panel as panel_module
from tests.device import test_panel
from tests.device.test_panel import Panel
from tests.support.procs import Proc, free_port, python, wait_http

SIGNAL_HEAD_TIMEOUT = 4.0
STEP = 0.5
"""Seconds between two bytes of the slow head."""
SLACK = 30.0
"""How much later than its head timeout a listener may close the slow connection (a loaded
machine); far below aiohttp's default of an hour."""
panel = test_panel.panel
"""The module-scoped fixture of tests/device/test_panel.py: a daemon serving its panel."""
PARTIAL_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 8000


@dataclass
class Slow:
    """What a slowloris connection got: bytes it sent, whether the server closed it, what
    the server sent back."""

    sent: int = 0
    closed: bool = False
    reply: bytes = b""


async def slowloris(port: int, bound: float, slow: Slow) -> None:
    """Send PARTIAL_HEAD to 127.0.0.1:`port` a byte every STEP seconds until the server
    closes the connection, for at most `bound` seconds (bounded: one byte per step)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    eof = asyncio.ensure_future(reader.read())
    try:
        for i in range(min(int(bound / STEP) + 1, len(PARTIAL_HEAD))):
            try:
                writer.write(PARTIAL_HEAD[i:i + 1])
                await writer.drain()
            except ConnectionError:
                break
            slow.sent += 1
            await asyncio.wait([eof], timeout=STEP)
            if eof.done():
                break
        await asyncio.wait([eof], timeout=STEP)
        if eof.done():
            slow.closed = True
            slow.reply = b"" if eof.exception() else eof.result()
    finally:
        eof.cancel()
        writer.close()


async def attack_while_serving(port: int, head_timeout: float, url: str) -> Slow:
    """Run a slowloris connection against `port`; once it has sent a few bytes, a normal
    client GETs `url` (200, while the slow connection is still open). Return the slow one."""
    slow = Slow()
    attack = asyncio.create_task(slowloris(port, head_timeout + SLACK, slow))
    for _ in range(200):  # until the slow head has started
        if slow.sent >= 3 or attack.done():
            break
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=30)) as r:
                assert r.status == 200, url
                await r.read()
    assert not attack.done(), "the slow connection ended before the normal client was served"
    await attack
    return slow


def assert_cut_off(slow: Slow) -> None:
    assert slow.closed, f"still open after {slow.sent} bytes of a head that never ends"
    assert slow.sent >= 3 and slow.reply == b"", slow


# ----- the signaling server


@pytest.fixture(scope="module")
def signal_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("slow-signal")
    port = free_port()
    config = tmp / "signal.toml"
    config.write_text(f"[server]\nport = {port}\n[limits]\nhead_timeout = {SIGNAL_HEAD_TIMEOUT}\n")
    proc = Proc("signal", python("-m", "peerproxyd", "signal", "--config", str(config)), tmp)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        proc.wait_for_log(rf"request heads within {SIGNAL_HEAD_TIMEOUT:g} s")
        yield port
    finally:
        proc.stop()


async def test_signaling_server_closes_a_slowloris_connection(signal_port: int) -> None:
    slow = await attack_while_serving(
        signal_port, SIGNAL_HEAD_TIMEOUT, f"http://127.0.0.1:{signal_port}/healthz")
    assert_cut_off(slow)


# ----- the daemon's status panel (tests/device/test_panel.py's daemon) and a native client


@pytest.fixture(scope="module")
def client_url(panel: Panel) -> str:
    """The native client's local port, on the panel's stack."""
    _, url = panel.stack.client("camera")
    return url


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_status_panel_closes_a_slowloris_connection(panel: Panel) -> None:
    slow = await attack_while_serving(
        port_of(panel.url), panel_module.HEAD_TIMEOUT, f"{panel.url}/status.json")
    assert_cut_off(slow)


async def test_native_client_port_closes_a_slowloris_connection(client_url: str) -> None:
    slow = await attack_while_serving(port_of(client_url), native.HEAD_TIMEOUT, client_url + "/")
    assert_cut_off(slow)


# ----- oversized heads


async def raw_exchange(port: int, head: bytes) -> bytes:
    """Send `head` to 127.0.0.1:`port`; everything the server sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(30):
            return await reader.read()
    finally:
        writer.close()


OVERSIZED = {
    "a header line": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "a request line": b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
}


async def test_every_listener_refuses_an_oversized_head(
    signal_port: int, panel: Panel, client_url: str
) -> None:
    listeners = {
        "signaling": (signal_port, f"http://127.0.0.1:{signal_port}/healthz"),
        "panel": (port_of(panel.url), f"{panel.url}/status.json"),
        "native client": (port_of(client_url), client_url + "/"),
    }
    async with aiohttp.ClientSession() as http:
        for name, (port, url) in listeners.items():
            for what, head in OVERSIZED.items():
                reply = await raw_exchange(port, head)
                assert reply.startswith(b"HTTP/1.0 400 Bad Request\r\n"), (name, what, reply)
                async with http.get(url) as r:
                    assert r.status == 200, (name, what)
