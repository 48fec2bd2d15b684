"""The Stack of stack.py with `[limits]` keys of the test's choosing (the plain Stack writes
its own `[limits]` table, which `extra_config` cannot extend)."""

from __future__ import annotations

from tests.support.procs import Proc, daemon_config, python
from tests.support.stack import Stack


class TunedStack(Stack):
    def daemon(self, services: dict[str, int], limits: dict[str, object] | None = None) -> Proc:
        config = daemon_config(
            self.log_dir / "daemon.toml", state_dir=self.state_dir, signal_port=self.signal_port,
            services=services,
        )
        text = config.read_text()
        extra = "".join(f"{k} = {_toml(v)}\n" for k, v in (limits or {}).items())
        text = text.replace("[limits]\n", "[limits]\n" + extra, 1)
        config.write_text(text + self.extra_config)
        proc = self._start("daemon", python("-m", "peerproxyd", "serve", "--config", str(config)))
        proc.wait_for_log("registered as")
        return proc


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
