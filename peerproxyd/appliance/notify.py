"""systemd notifications (sd_notify) through the sdnotify package.

`Notifier` sends READY=1, STATUS=..., RELOADING=1, STOPPING=1 and WATCHDOG=1 to the socket
named by `NOTIFY_SOCKET`. Without that variable (not started by systemd with `Type=notify`)
every method is a no-op, so the daemon calls them unconditionally.

The watchdog interval is half of `WATCHDOG_USEC` (sd_watchdog_enabled(3) recommends pinging
at least twice per period); `watchdog()` pings only while the given health check passes, so
a stuck event loop or a dead signaling loop lets systemd restart the service.

Containers have no systemd: with `PEERPROXYD_HEALTH_FILE` set, the same events keep that file
current instead. It appears at READY, holds the STATUS line, is rewritten every
HEALTH_INTERVAL seconds while healthy and removed at STOPPING, so a HEALTHCHECK only has to
look at its age (docker/healthcheck.sh).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import sdnotify

logger = logging.getLogger(__name__)

STATUS_MAX = 400
"""STATUS= is one line; longer text is cut (journald and `systemctl status` show one line)."""
HEALTH_INTERVAL = 10.0
"""Seconds between rewrites of PEERPROXYD_HEALTH_FILE while healthy."""


class Notifier:
    """One connection to systemd's notification socket, or nothing at all."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval = _watchdog_interval(env)
        self.health_file = Path(env["PEERPROXYD_HEALTH_FILE"]) if env.get(
            "PEERPROXYD_HEALTH_FILE") else None
        self._last_status: str | None = None
        self._ready = False
        self._sd: sdnotify.SystemdNotifier | None = None
        if self.socket_path is not None:
            self._sd = _connect(self.socket_path)
            if self._sd is None:
                logger.warning("NOTIFY_SOCKET=%s: cannot connect; not notifying systemd",
                               self.socket_path)

    @property
    def enabled(self) -> bool:
        """Whether anything listens: systemd's socket or a health file."""
        return self._sd is not None or self.health_file is not None

    def _send(self, *fields: str) -> None:
        if self._sd is not None:
            message = "\n".join(fields)
            logger.debug("sd_notify %s", message.replace("\n", " "))
            self._sd.notify(message)

    def ready(self, status: str | None = None) -> None:
        """The service is up (or back up after a reload)."""
        self._ready = True
        if status is not None:
            self._last_status = _one_line(status)
            self._send("READY=1", f"STATUS={self._last_status}")
        else:
            self._send("READY=1")
        self._write_health()

    def status(self, text: str) -> None:
        """Set the one-line status `systemctl status` shows; repeated text is not resent."""
        line = _one_line(text)
        if line != self._last_status:
            self._last_status = line
            self._send(f"STATUS={line}")
            self._write_health()

    def reloading(self) -> None:
        """A reload started; send ready() when it is over, whatever its outcome."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> None:
        """The service is shutting down."""
        self._ready = False
        if status is not None:
            self._last_status = _one_line(status)
            self._send("STOPPING=1", f"STATUS={self._last_status}")
        else:
            self._send("STOPPING=1")
        if self.health_file is not None:
            self.health_file.unlink(missing_ok=True)

    def ping(self) -> None:
        """WATCHDOG=1 (if systemd asked for it) and a fresh health file."""
        if self.watchdog_interval is not None:
            self._send("WATCHDOG=1")
        self._write_health()

    async def watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping while `healthy()`: every watchdog_interval seconds for systemd, at least every
        HEALTH_INTERVAL for a health file; return at once if neither wants it. Runs until
        cancelled."""
        periods = [HEALTH_INTERVAL] if self.health_file is not None else []
        if self._sd is not None and self.watchdog_interval is not None:
            periods.append(self.watchdog_interval)
        if not periods:
            return
        interval = min(periods)
        logger.debug("watchdog: pinging every %.2f s", interval)
        was_healthy = True
        while True:
            ok = healthy()
            if ok:
                self.ping()
            elif was_healthy:
                logger.warning("watchdog: unhealthy, not pinging")
            was_healthy = ok
            await asyncio.sleep(interval)

    def _write_health(self) -> None:
        """Replace the health file with the status line (atomically), once ready."""
        if self.health_file is None or not self._ready:
            return
        tmp = self.health_file.with_name(self.health_file.name + ".tmp")
        try:
            tmp.write_text((self._last_status or "ready") + "\n", encoding="latin-1")
            os.replace(tmp, self.health_file)
        except OSError as exc:
            logger.warning("cannot write health file %s: %s", self.health_file, exc)


def _connect(address: str) -> sdnotify.SystemdNotifier | None:
    """An sdnotify notifier connected to `address` ('@name': abstract namespace)."""
    notifier = sdnotify.SystemdNotifier()  # connects to os.environ's NOTIFY_SOCKET, if any
    if address != os.environ.get("NOTIFY_SOCKET"):  # an explicit environment
        if notifier.socket is not None:
            notifier.socket.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect("\0" + address[1:] if address.startswith("@") else address)
        except OSError:
            sock.close()
            return None
        notifier.socket = sock
    return notifier if notifier.socket is not None else None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC in seconds, or None when this process has no watchdog."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000


def _one_line(text: str) -> str:
    """Single line, latin-1 safe (sdnotify encodes latin-1), at most STATUS_MAX characters."""
    line = " ".join(text.split())
    line = line.encode("latin-1", "replace").decode("latin-1")
    if len(line) > STATUS_MAX:
        line = line[: STATUS_MAX - 3] + "..."
    return line
