"""Each process imports only what its command and WebRTC backend need (issue 15 target 5).

Real processes run with PYTHONPROFILEIMPORTTIME=1: their logs list every module they
imported, from start to stop, including what they import late (on the first viewer or
request). aiortc with PyAV is ~25 MB of a process's ~90: the signaling server must not load
it, nor a daemon or native client on the native backend. The RSS figures themselves are a
benchmark (bench/memory.py), not asserted here."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from peerproxyd.rtc.transport import native_available
from tests.support.procs import ROOT, Proc, free_port, wait_http
from tests.support.stack import Stack

WEBRTC = ("aiortc", "av", "libdatachannel")
needs_native = pytest.mark.skipif(
    not native_available(), reason="libdatachannel-py not importable (needs Python >= 3.12 and "
    "the native extra; `make test-native`)")


def imported(log: str) -> set[str]:
    """The top-level packages named in a log's `-X importtime` lines."""
    return {m.group(1).split(".")[0]
            for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", log, re.M)}


def loaded_in_fresh_process(*modules: str) -> set[str]:
    """The WebRTC packages in sys.modules after importing `modules` in a new interpreter."""
    code = (f"import importlib, sys\nfor m in {list(modules)!r}: importlib.import_module(m)\n"
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(WEBRTC)!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
                          check=True)
    return set(done.stdout.split())


@pytest.fixture
def importtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process a test starts logs its imports (Proc passes the environment on)."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")


def test_the_command_line_and_the_ends_import_no_webrtc_stack_until_one_is_chosen():
    """A module of ours that names a backend at import time would load it in every process."""
    assert loaded_in_fresh_process(
        "peerproxyd.cli", "peerproxyd.rtc.transport", "peerproxyd.rtc.report",
        "peerproxyd.device.daemon", "peerproxyd.client.native", "peerproxyd.appliance.mdns",
        "peerproxyd.signaling.server",
    ) == set()
    # The check can fail: the aiortc backend's module does load its stack.
    assert {"aiortc", "av"} <= loaded_in_fresh_process("peerproxyd.rtc.transport_aiortc")


def test_the_signaling_server_loads_no_webrtc_stack(tmp_path: Path, importtime: None):
    """`peerproxyd signal` with its defaults (the STUN responder on), serving a request."""
    stun = free_port()
    port = free_port()
    proc = Proc("signal", [sys.executable, "-m", "peerproxyd", "signal", "--port", str(port),
                           "--stun-port", str(stun)], tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.stop()
    modules = imported(proc.log())
    assert {"aiohttp", "peerproxyd"} <= modules  # the log was read
    assert modules.isdisjoint(WEBRTC), sorted(modules & set(WEBRTC))


def _serve_one_request(stack: Stack, backend: str) -> tuple[Proc, Proc]:
    """A daemon and a native client on `backend`, one request through them; both stopped."""
    stack.backend = backend
    stack.upstream("camera")
    stack.signal()
    daemon = stack.daemon({"camera": stack.upstream_ports["camera"]})
    client, url = stack.client("camera")

    async def get() -> None:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/echo/x") as response:
            assert response.status == 200
            assert (await response.json())["path"] == "/echo/x"

    asyncio.run(get())
    client.stop()
    daemon.stop()
    return daemon, client


@needs_native
def test_a_native_daemon_and_client_load_no_aiortc(tmp_path: Path, importtime: None):
    stack = Stack(tmp_path)
    try:
        daemon, client = _serve_one_request(stack, "native")
    finally:
        stack.stop()
    for proc in (daemon, client):
        modules = imported(proc.log())
        assert "libdatachannel" in modules, proc.name  # it did run on the native backend
        assert modules.isdisjoint({"aiortc", "av"}), (proc.name, sorted(modules & {"aiortc", "av"}))
    # The client holds no key (libdatachannel makes its DTLS certificate): ~7 MB less.
    assert "cryptography" in imported(daemon.log())
    assert "cryptography" not in imported(client.log())


@needs_native
def test_an_aiortc_daemon_and_client_load_no_libdatachannel(tmp_path: Path, importtime: None):
    """Where both are installed, the aiortc backend does not load the native one either."""
    stack = Stack(tmp_path)
    try:
        daemon, client = _serve_one_request(stack, "aiortc")
    finally:
        stack.stop()
    for proc in (daemon, client):
        modules = imported(proc.log())
        assert "aiortc" in modules, proc.name
        assert "libdatachannel" not in modules, proc.name
