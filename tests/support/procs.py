"""Real processes for end-to-end tests: started by the tests, ended by PID, logs kept."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_BACKEND = os.environ.get("PEERPROXYD_TEST_BACKEND", "auto")
"""The WebRTC backend ("auto", "aiortc" or "native") of the daemons, native clients and raw
peers the tests start: `[transport] backend`, `connect --backend`. `make test-native` runs the
end-to-end suites with "native" (in-process daemons use "auto": native when importable)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose stderr+stdout go to a log file the test can search."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, *, count: int = 1, timeout: float = 20.0) -> re.Match[str]:
        """Wait until `pattern` has appeared `count` times in the log; return the last match."""
        deadline = time.monotonic() + timeout
        while True:
            matches = list(re.finditer(pattern, self.log()))
            if len(matches) >= count:
                return matches[count - 1]
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}):\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {pattern!r} within {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self._log.close()

    def rss_peak_kib(self) -> int:
        """Peak resident set size (VmHWM) of the running process."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def new_device(state_dir: Path) -> str:
    """Create (or load) the device identity in `state_dir`; its device id."""
    from peerproxyd.trust.identity import load_or_create

    return load_or_create(state_dir).device_id


def share_link(
    state_dir: Path, service: str, name: str, base: str = "http://localhost"
) -> str:
    """A new viewer `name` of `service` on the device in `state_dir`, stored as `peerproxyd
    share` stores it; its share link (native clients in tests pass --signal anyway)."""
    from datetime import UTC, datetime

    from peerproxyd.trust.identity import load_or_create
    from peerproxyd.trust.viewer_auth import build_link
    from peerproxyd.trust.viewers import ViewerStore

    identity = load_or_create(state_dir)
    token = ViewerStore(state_dir).add(name, service, expires=None, now=datetime.now(UTC))
    return build_link(base, device=identity.device_id, service=service,
                      name=name, token=token, fingerprint=identity.fingerprint_bytes)


def daemon_config(
    path: Path, *, state_dir: Path, signal_port: int, services: dict[str, int],
    backend: str = TEST_BACKEND, service_options: dict[str, list[str]] | None = None,
) -> Path:
    """A daemon configuration whose device key lives in `state_dir` (see new_device());
    `service_options`: more lines for a service's table (`read_timeout = 0`, ...)."""
    lines = [
        "[device]",
        f'state_dir = "{state_dir}"',
        "[signaling]",
        f'url = "ws://127.0.0.1:{signal_port}/ws"',
        "reconnect_min = 0.1",
        "reconnect_max = 1.0",
        "[ice]",
        'host_addresses = ["127.0.0.1"]',
        "[transport]",
        f'backend = "{backend}"',
        "[limits]",
        "heartbeat_interval = 1.0",
        "heartbeat_timeout = 5.0",
    ]
    for name, port in services.items():
        options = (service_options or {}).get(name, [])
        lines += [f"[services.{name}]", f'upstream = "http://127.0.0.1:{port}"']
        if not any(o.startswith("read_timeout") for o in options):
            lines.append("read_timeout = 5.0")
        lines += options
    path.write_text("\n".join(lines) + "\n")
    return path
