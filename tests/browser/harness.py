"""Browser tests' world: one network namespace holding the test app, the signaling server,
the daemon and Chromium (recipe A of chromium-webrtc.md: loopback only).

    root namespace                 |  namespace pp-<random> (lo only, 127.0.0.1)
    pytest -- JSON over a pipe --> |  tests.browser.agent -> Chromium (Playwright over CDP)
                                   |  python -m peerproxyd signal   :8787
                                   |  python -m peerproxyd serve    (device world.device)
                                   |  tests.browser.app             :8081 (service camera)

The pytest process never enters the namespace: every process there is started with
`ip netns exec`, and the agent is the only way to the browser. `down()` ends those processes
by PID and deletes the namespace. Chromium resolves `*.localhost` to 127.0.0.1 by itself, so
`http://<device id>--camera.localhost:8787/` needs no DNS and is a secure context. The device
key is made up front (world.device is its id) and kept across daemon restarts.

Viewers: `up()` shares each service with one viewer (`peerproxyd share`, VIEWERS) and keeps
the links; `open()` opens a service through its viewer's link, as a person would.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.support.procs import ROOT, Proc, daemon_config, new_device

SERVICE = "camera"
OTHER_SERVICE = "admin"  # the same app under a second name: a second origin
VIEWERS = {SERVICE: "alice", OTHER_SERVICE: "alice-admin"}  # the viewer up() shares each with
SIGNAL_PORT = 8787
APP_PORT = 8081
CALL_TIMEOUT = 90.0


def unavailable_reason() -> str | None:
    """Why browser tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "browser tests need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed"
    if not Path("/usr/bin/chromium").exists():
        return "Debian chromium is not installed (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Python playwright is not installed (pip install playwright)"
    return None


def _run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


class AgentError(RuntimeError):
    pass


class Remote:
    """`agent.page.evaluate(...)`, `agent.app.click(...)`: Playwright calls run in the agent."""

    def __init__(self, agent: Agent, target: str) -> None:
        self._agent = agent
        self._target = target

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._agent.call(self._target, method, *args, **kwargs)

        return call


class Agent:
    """The pipe to tests/browser/agent.py; every call is bounded by CALL_TIMEOUT."""

    def __init__(self, ns: str, log_dir: Path, *, chromium_flags: Sequence[str] = ()) -> None:
        """`chromium_flags`: more command-line flags for Chromium (e.g. --host-resolver-rules)."""
        self.log_path = log_dir / "agent.log"
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PP_CHROMIUM_LOG": str(log_dir / "chromium.log"),
               "PP_CHROMIUM_FLAGS": json.dumps(list(chromium_flags))}
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.browser.agent"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT, env=env,
        )
        self._selector = selectors.DefaultSelector()
        assert self.popen.stdout is not None
        os.set_blocking(self.popen.stdout.fileno(), False)
        self._selector.register(self.popen.stdout, selectors.EVENT_READ)
        self._buffer = b""
        self._next_id = 0
        hello = self._read_line(60.0)
        if not hello.get("ready"):
            raise AgentError(f"agent did not start: {hello}")
        self.chromium_pid: int = hello["chromium_pid"]
        self.page = Remote(self, "page")
        self.app = Remote(self, "app")

    def _read_line(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError(f"agent silent for {timeout}s:\n{self._log_tail()}")
            if not self._selector.select(left):
                continue
            assert self.popen.stdout is not None
            chunk = self.popen.stdout.read()
            if chunk == b"" or (chunk is None and self.popen.poll() is not None):
                raise AgentError(f"agent exited ({self.popen.poll()}):\n{self._log_tail()}")
            self._buffer += chunk or b""
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def request(self, op: str, timeout: float = CALL_TIMEOUT, **fields: Any) -> Any:
        self._next_id += 1
        message = {"id": self._next_id, "op": op, **fields}
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(message) + "\n").encode())
        self.popen.stdin.flush()
        reply = self._read_line(timeout)
        if reply.get("id") != self._next_id:
            raise AgentError(f"out-of-order reply {reply}")
        if not reply["ok"]:
            raise AgentError(reply["error"])
        return _decode(reply["value"])

    def call(self, target: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.request("call", target=target, method=method, args=list(args), kwargs=kwargs)

    def new_page(self) -> None:
        self.request("new_page")

    def quit(self) -> None:
        try:
            if self.popen.poll() is None:
                self.request("quit", timeout=20.0)
                self.popen.wait(20)
        except (AgentError, OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait(10)
            _kill_pid(self.chromium_pid)
            self._log.close()


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__bytes__"}:
        return base64.b64decode(value["__bytes__"])
    return value


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class BrowserWorld:
    """`services` (name -> upstream port, default: the test app under SERVICE and
    OTHER_SERVICE) and `service_options` (name -> more TOML lines of its `[services.NAME]`
    table) configure the daemon; `test_app=False` leaves tests.browser.app out (a test that
    brings a real app starts it with `start_cmd` after `up()`)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        services: dict[str, int] | None = None,
        service_options: dict[str, list[str]] | None = None,
        test_app: bool = True,
    ) -> None:
        self.log_dir = log_dir
        self.services = services or {SERVICE: APP_PORT, OTHER_SERVICE: APP_PORT}
        self.service_options = service_options or {}
        self.test_app = test_app
        self.ns = f"pp-{secrets.token_hex(4)}"
        self.procs: dict[str, Proc] = {}
        self.agent: Agent | None = None
        self.links: dict[str, str] = {}  # viewer name -> share link
        self.extra_limits: list[str] = []  # more `[limits]` lines for the daemon's config
        self._made = False
        self.state_dir = log_dir / "device-state"
        self.device = new_device(self.state_dir)
        """The daemon's device id."""

    # ----- set-up
    def up(self) -> BrowserWorld:
        _run("ip", "netns", "add", self.ns)
        self._made = True
        _run("ip", "-n", self.ns, "link", "set", "lo", "up")
        if self.test_app:
            self.start("app", "-m", "tests.browser.app", "--port", str(APP_PORT))
        self.start("signal", "-m", "peerproxyd", "signal", "--port", str(SIGNAL_PORT))
        if self.test_app:
            self.procs["app"].wait_for_log("test app listening")
        self.procs["signal"].wait_for_log("signaling server listening")
        self.start_daemon()
        for service in self.services:
            self.share(self.viewer_of(service), service)
        self.agent = Agent(self.ns, self.log_dir)
        return self

    def start(self, name: str, *args: str) -> Proc:
        """A Python process (`python ARGS`) in the namespace."""
        return self.start_cmd(name, sys.executable, *args)

    def start_cmd(self, name: str, *argv: str, env: dict[str, str] | None = None) -> Proc:
        """Any program in the namespace; its output goes to `<log_dir>/<name>.log`."""
        proc = Proc(name, ["ip", "netns", "exec", self.ns, *argv], self.log_dir, env=env)
        self.procs[name] = proc
        return proc

    def ns_run(self, *argv: str) -> str:
        """Run a short command in the namespace (e.g. `ip route add ...`); its stdout."""
        return _run("ip", "netns", "exec", self.ns, *argv)

    @property
    def config(self) -> Path:
        return self.log_dir / "daemon.toml"

    def start_daemon(self) -> Proc:
        config = daemon_config(
            self.config, state_dir=self.state_dir, signal_port=SIGNAL_PORT,
            services=self.services, service_options=self.service_options,
        )
        if self.extra_limits:
            text = config.read_text().replace("[limits]\n", "[limits]\n" + "".join(
                line + "\n" for line in self.extra_limits), 1)
            config.write_text(text)
        previous = self.procs.get("daemon")
        count = len(re.findall("registered as", previous.log())) if previous else 0
        proc = self.start("daemon", "-m", "peerproxyd", "serve", "--config", str(config))
        proc.wait_for_log("registered as", count=count + 1)
        return proc

    def stop_daemon(self) -> None:
        self.procs["daemon"].stop()

    def peerproxyd(self, *args: str) -> str:
        """Run `peerproxyd ARGS` in the namespace (next to the daemon's state); its stdout."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "peerproxyd", *args],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        if result.returncode != 0:
            raise RuntimeError(f"peerproxyd {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def share(self, viewer: str, service: str = SERVICE, *, expires: str = "never") -> str:
        """A new viewer of `service`: its share link (also kept in `links`)."""
        out = self.peerproxyd("share", "--config", str(self.config), "--service", service,
                              "--name", viewer, "--expires", expires, "--no-qr")
        link = out.strip().splitlines()[-1]
        fields = link_fields(link)
        assert fields["n"] == viewer and fields["s"] == service, link
        assert fields["d"] == self.device, link
        self.links[viewer] = link
        return link

    def revoke(self, viewer: str) -> None:
        self.peerproxyd("revoke", "--config", str(self.config), viewer)

    def down(self) -> None:
        if self.agent is not None:
            self.agent.quit()
            self.agent = None
        for proc in reversed(list(self.procs.values())):
            try:
                proc.stop()
            except Exception:
                pass
        if self._made:
            # Anything still in the namespace is a child of ours (a Chromium helper): end it.
            out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
            for pid in out.stdout.split():
                _kill_pid(int(pid))
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
            self._made = False

    # ----- helpers for tests
    def viewer_of(self, service: str) -> str:
        """The viewer up() shares `service` with (a service not configured: SERVICE's)."""
        if service in VIEWERS:
            return VIEWERS[service]
        return f"viewer-{service}" if service in self.services else VIEWERS[SERVICE]

    def origin(self, device: str | None = None, service: str = SERVICE, port: int = SIGNAL_PORT) -> str:
        return f"http://{device or self.device}--{service}.localhost:{port}"

    def link(self, path: str = "/", *, viewer: str | None = None, service: str = SERVICE,
             device: str | None = None, port: int = SIGNAL_PORT, **fields: str) -> str:
        """The share link of `viewer` (default: the one of `service`) opened at `path`;
        `device`, `service` (when not its own) and `fields` (t=, f=, ...) forge a variant."""
        viewer = viewer or self.viewer_of(service)
        values = link_fields(self.links[viewer])
        values.update(d=device or values["d"], s=service, **fields)
        fragment = "&".join(f"{k}={v}" for k, v in values.items() if v is not None)
        return f"{self.origin(values['d'], service, port)}{path}#{fragment}"

    def app_requests(self) -> list[str]:
        """`METHOD path` of every request the test app received, in order (from its log)."""
        return re.findall(r"^REQUEST (.*)$", self.procs["app"].log(), re.M)

    def answered(self) -> int:
        """Peer connections the daemon has answered so far (across restarts)."""
        return len(re.findall(r"answered \(", self.procs["daemon"].log()))

    def app_state(self) -> dict[str, Any]:
        """The test app's record of what it received (uploads, logins), from its log."""
        records = re.findall(r"^STATE (.*)$", self.procs["app"].log(), re.M)
        return json.loads(records[-1]) if records else {}

    def open(self, path: str = "/", *, device: str | None = None, service: str = SERVICE,
             viewer: str | None = None, url: str | None = None, phase: str = "connected",
             timeout: float = 20.0, document: bool = True) -> None:
        """A fresh browser context opening the share link of `viewer` (default: the one of
        `service`) at `path`, or `url`; wait for `phase` and, once connected and unless
        `document` is false (a 401 that the sign-in dialog holds back), for the app frame's
        document (the card leaves at the frame's first response, a moment before that
        document replaces the frame's initial about:blank)."""
        assert self.agent is not None
        self.agent.new_page()
        self.agent.page.goto(url or self.link(path, viewer=viewer, service=service, device=device))
        self.wait_phase(phase, timeout=timeout)
        if phase == "connected" and document:
            self.agent.page.wait_for_function(
                "() => { const d = document.getElementById('app')?.contentDocument;"
                " return !!d && d.URL !== 'about:blank'; }", timeout=timeout * 1000)

    def wait_phase(self, phase: str, timeout: float = 20.0) -> None:
        assert self.agent is not None
        self.agent.page.wait_for_function(
            "p => document.body.dataset.phase === p", arg=phase, timeout=timeout * 1000
        )

    def screenshot(self, name: str) -> Path:
        assert self.agent is not None
        path = self.log_dir / f"{name}.png"
        self.agent.page.screenshot(path=str(path))
        return path


def link_fields(link: str) -> dict[str, str]:
    """The fragment of a share link as {key: value} (v, d, s, n, t, f)."""
    return dict(parse_qsl(urlsplit(link).fragment, strict_parsing=True))


def png_pixel(data: bytes, x: int, y: int) -> tuple[int, int, int]:
    """The RGB of pixel (x, y) of an 8-bit, non-interlaced RGB/RGBA PNG (a Chromium screenshot)."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, idat = 8, b""
    width = height = channels = 0
    while at < len(data):
        (length,) = struct.unpack("!I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack("!IIBBBBB", body)
            assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    for row in range(y + 1):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 255
        previous = line
    px = previous[x * channels : x * channels + 3]
    return px[0], px[1], px[2]
