"""The signaling server's configuration file (`peerproxyd signal --config FILE`).

A small schema of its own, separate from the daemon's (config.py): a `[server]` table, whose
presence is what marks a file as a signaling-server configuration for `check-config`,
`[limits]` and `[log]`. Unknown keys are errors; problems come out one line per key, in the
same form as the daemon's. See config/signal.toml.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from peerproxyd.config import LogSettings, _problem
from peerproxyd.errors import ConfigError

__all__ = ["SignalServerSettings", "SignalLimits", "SignalSettings", "is_signal_config", "load"]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class SignalServerSettings(_Table):
    """`[server]`: where the signaling server listens."""

    host: str = "127.0.0.1"
    """Address to listen on; `0.0.0.0` or `::` for every interface. **Default:** 127.0.0.1."""

    port: int = Field(default=8787, ge=0, le=65535)
    """TCP port (0: any free port). **Default:** 8787."""

    webclient_dir: Path | None = None
    """Directory served at `/` (the browser viewer); relative to the configuration file.
    **Default:** the `webclient/` directory shipped with peerproxyd."""

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"must be an address or host name, got {value!r}")
        return value


class SignalLimits(_Table):
    """`[limits]`: what one WebSocket connection may send."""

    max_message_size: int = Field(default=65_536, ge=1024, le=1_048_576)
    """Largest message in bytes. **Default:** 65536."""

    rate: float = Field(default=20.0, gt=0)
    """Messages per second a connection may send on average. **Default:** 20.0."""

    burst: int = Field(default=100, ge=1)
    """Messages a connection may send at once above `rate`. **Default:** 100."""


class SignalSettings(_Table):
    """The whole signaling-server configuration."""

    server: SignalServerSettings = Field(default_factory=SignalServerSettings)
    limits: SignalLimits = Field(default_factory=SignalLimits)
    log: LogSettings = Field(default_factory=LogSettings)

    def app_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `signaling_server.run_signaling()` after host and port."""
        kwargs: dict[str, Any] = {
            "max_message_size": self.limits.max_message_size,
            "rate": self.limits.rate,
            "burst": self.limits.burst,
        }
        if self.server.webclient_dir is not None:
            kwargs["webclient_dir"] = self.server.webclient_dir
        return kwargs


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError([f"file not found: {path}"])
    if not path.is_file():
        raise ConfigError([f"not a regular file: {path}"])
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"invalid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"invalid TOML: {path} is not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"]) from None


def is_signal_config(path: str | Path) -> bool:
    """Whether the file is meant for the signaling server: it has a `[server]` table and no
    `[device]` table. Unreadable files are not (the daemon's loader reports why)."""
    try:
        data = _read(Path(path))
    except ConfigError:
        return False
    return "server" in data and "device" not in data


def load(path: str | Path) -> SignalSettings:
    """Read and validate a signaling-server configuration; `ConfigError` lists every problem."""
    path = Path(path)
    data = _read(path)
    try:
        settings = SignalSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_problem(error) for error in exc.errors(include_url=False)]) from None
    webclient = settings.server.webclient_dir
    if webclient is not None and not webclient.is_absolute():
        settings.server.webclient_dir = path.parent / webclient
    return settings
