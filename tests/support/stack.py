"""The whole path as real processes: upstreams, signaling server, daemon, native clients."""

from __future__ import annotations

from pathlib import Path

from tests.support.procs import (
    TEST_BACKEND,
    Proc,
    daemon_config,
    free_port,
    new_device,
    python,
    share_link,
    wait_http,
)


class Stack:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, Proc] = {}
        self.signal_port = free_port()
        self.upstream_ports: dict[str, int] = {}
        self.services: dict[str, str] = {}  # service name -> upstream URL
        self.extra_config = ""
        self.backend = TEST_BACKEND  # [transport] backend of the daemon, --backend of clients
        self.state_dir = log_dir / "device-state"
        self.device = new_device(self.state_dir)
        """The daemon's device id (its key is made up front, in state_dir)."""
        self.viewers = 0

    @property
    def signal_url(self) -> str:
        return f"ws://127.0.0.1:{self.signal_port}/ws"

    def _start(self, name: str, args: list[str]) -> Proc:
        proc = Proc(name, args, self.log_dir)
        self.procs[name] = proc
        return proc

    def upstream(self, name: str, port: int | None = None) -> str:
        """Start the upstream `name` (on `port`: again, after it went)."""
        port = port or free_port()
        self._start(
            f"upstream-{name}",
            python("-m", "tests.support.upstream_app", "--port", str(port), "--name", name),
        )
        wait_http(f"http://127.0.0.1:{port}/")
        self.upstream_ports[name] = port
        return f"http://127.0.0.1:{port}"

    def signal(self, *options: str) -> Proc:
        """The signaling server on `signal_port`; `options`: more `peerproxyd signal` flags."""
        proc = self._start(
            "signal",
            python("-m", "peerproxyd", "signal", "--port", str(self.signal_port), *options),
        )
        wait_http(f"http://127.0.0.1:{self.signal_port}/healthz")
        return proc

    def daemon(self, services: dict[str, int]) -> Proc:
        config = daemon_config(
            self.log_dir / "daemon.toml",
            state_dir=self.state_dir,
            signal_port=self.signal_port,
            services=services,
            backend=self.backend,
        )
        if self.extra_config:
            with open(config, "a") as f:
                f.write(self.extra_config)
        proc = self._start("daemon", python("-m", "peerproxyd", "serve", "--config", str(config)))
        proc.wait_for_log("registered as")
        return proc

    def link(self, service: str) -> str:
        """The share link of a new viewer of `service` (each client is its own viewer), at
        http://<device>--<service>.localhost:<signaling port>/ as a browser opens it."""
        self.viewers += 1
        return share_link(self.state_dir, service, f"{service}-viewer-{self.viewers}",
                          base=f"http://localhost:{self.signal_port}")

    def connect_args(self, service: str, port: int, backend: str | None = None) -> list[str]:
        return python(
            "-m", "peerproxyd", "connect", self.link(service), "--signal", self.signal_url,
            "--listen", f"127.0.0.1:{port}", "--host-address", "127.0.0.1",
            "--backend", backend or self.backend,
        )

    def client(self, service: str, backend: str | None = None) -> tuple[Proc, str]:
        port = free_port()
        name = f"client-{service}"
        if name in self.procs:  # a second client of the service: a log of its own
            name += f"-{len(self.procs)}"
        proc = self._start(name, self.connect_args(service, port, backend))
        proc.wait_for_log("is at http")
        return proc, f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
