"""The signaling server's configuration file (`peerproxyd signal --config FILE`).

A small schema of its own, separate from the daemon's (config.py): a `[server]` table, whose
presence is what marks a file as a signaling-server configuration for `check-config`,
`[limits]`, `[ice]` (what browsers are told), `[redis]` (several instances) and `[log]`.
Unknown keys are errors; problems come out one line per key, in the
same form as the daemon's. See config/signal.toml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerproxyd.config import ICE_URL_RE, LogSettings, read_toml
from peerproxyd.errors import ConfigError
from peerproxyd.schema import Table, build, setting
from peerproxyd.signaling import turn_credentials

__all__ = [
    "SignalIceSettings",
    "SignalLimits",
    "SignalRedisSettings",
    "SignalServerSettings",
    "SignalSettings",
    "is_signal_config",
    "load",
]


def _host(value: str) -> str:
    if not value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"must be an address or host name, got {value!r}")
    return value


@dataclass(kw_only=True)
class SignalServerSettings(Table):
    """`[server]`: where the signaling server listens."""

    host: str = setting("127.0.0.1", check=_host)
    """Address to listen on; `0.0.0.0` or `::` for every interface. **Default:** 127.0.0.1."""

    port: int = setting(8787, ge=0, le=65535)
    """TCP port (0: any free port). **Default:** 8787."""

    webclient_dir: Path | None = None
    """Directory served at `/` (the browser viewer); relative to the configuration file.
    **Default:** the `webclient/` directory shipped with peerproxyd."""


@dataclass(kw_only=True)
class SignalLimits(Table):
    """`[limits]`: what one WebSocket connection may send."""

    max_message_size: int = setting(65_536, ge=1024, le=1_048_576)
    """Largest message in bytes. **Default:** 65536."""

    rate: float = setting(20.0, gt=0)
    """Messages per second a connection may send on average. **Default:** 20.0."""

    burst: int = setting(100, ge=1)
    """Messages a connection may send at once above `rate`. **Default:** 100."""

    head_timeout: float = setting(20.0, gt=0)
    """Seconds a client has to send a whole HTTP request head, from connecting or from its
    previous response; then the connection is closed (slowloris). Idle keep-alive connections
    close after as long: a reverse proxy in front should close its idle ones sooner.
    **Default:** 20.0."""


def _ice_urls(urls: list[str]) -> list[str]:
    for url in urls:
        if not ICE_URL_RE.match(url) or url.split(":", 1)[0] not in ("stun", "turn", "turns"):
            raise ValueError(f"not a stun:, turn: or turns: URL: {url!r}")
    return urls


@dataclass(kw_only=True)
class SignalIceSettings(Table):
    """`[ice]`: the STUN/TURN servers every browser is told about in its hello."""

    urls: list[str] = setting(factory=list, check=_ice_urls)
    """`stun:`/`turn:`/`turns:` URLs, e.g. `["stun:signal.example.net:3478",
    "turn:turn.example.net:3478?transport=udp"]`. **Default:** none."""

    turn_secret: str | None = setting(None, min_length=16, repr=False)
    """coturn's `static-auth-secret`: each browser gets its own short-lived TURN username and
    password minted from it (TURN REST API), never the secret. **Default:** unset."""

    turn_secret_file: Path | None = None
    """A file holding `turn_secret` (trailing newline stripped); relative to this file."""

    turn_ttl: int = setting(turn_credentials.DEFAULT_TTL, ge=60)
    """Seconds the minted TURN credentials stay valid. **Default:** 86400."""


def _redis_url(url: str | None) -> str | None:
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {url!r}")
    return url


@dataclass(kw_only=True)
class SignalRedisSettings(Table):
    """`[redis]`: several instances behind a load balancer share state through Redis."""

    url: str | None = setting(None, check=_redis_url)
    """`redis://[:password@]host:6379/0` (or `rediss://`); unset: state in memory, one
    instance. `--redis` on the command line overrides it. **Default:** unset."""

    presence_ttl: float = setting(15.0, ge=0.3)
    """Seconds a crashed instance's devices stay visible. **Default:** 15.0."""

    trusted_proxies: list[str] = setting(factory=list)
    """Load balancers (addresses or networks) whose `X-Forwarded-For` names the client, so
    rate limits count clients rather than the balancer. **Default:** none."""


@dataclass(kw_only=True)
class SignalSettings(Table):
    """The whole signaling-server configuration."""

    server: SignalServerSettings = setting(factory=SignalServerSettings)
    limits: SignalLimits = setting(factory=SignalLimits)
    ice: SignalIceSettings = setting(factory=SignalIceSettings)
    redis: SignalRedisSettings = setting(factory=SignalRedisSettings)
    log: LogSettings = setting(factory=LogSettings)

    def app_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `server.run_signaling()` after host and port."""
        kwargs: dict[str, Any] = {
            "max_message_size": self.limits.max_message_size,
            "rate": self.limits.rate,
            "burst": self.limits.burst,
            "head_timeout": self.limits.head_timeout,
        }
        if self.server.webclient_dir is not None:
            kwargs["webclient_dir"] = self.server.webclient_dir
        if self.ice.urls:
            kwargs.update(ice_urls=tuple(self.ice.urls), turn_ttl=self.ice.turn_ttl)
        if self.ice.turn_secret is not None:
            kwargs["turn_secret"] = self.ice.turn_secret
        if self.redis.url is not None:
            kwargs["redis_url"] = self.redis.url
            kwargs["redis_options"] = self.redis_options()
        return kwargs

    def redis_options(self) -> Any:
        """The `redis.RedisOptions` of the `[redis]` table."""
        from peerproxyd.signaling.redis import RedisOptions

        return RedisOptions(
            presence_ttl=self.redis.presence_ttl,
            trusted_proxies=tuple(self.redis.trusted_proxies),
        )


def is_signal_config(path: str | Path) -> bool:
    """Whether the file is meant for the signaling server: it has a `[server]` table and no
    `[device]` table. Unreadable files are not (the daemon's loader reports why)."""
    try:
        data = read_toml(Path(path))
    except ConfigError:
        return False
    return "server" in data and "device" not in data


def load(path: str | Path) -> SignalSettings:
    """Read and validate a signaling-server configuration; `ConfigError` lists every problem."""
    path = Path(path)
    data = read_toml(path)
    settings = build(SignalSettings, data)
    webclient = settings.server.webclient_dir
    if webclient is not None and not webclient.is_absolute():
        settings.server.webclient_dir = path.parent / webclient
    ice = settings.ice
    if ice.turn_secret_file is not None:
        if ice.turn_secret is not None:
            raise ConfigError(["ice.turn_secret: set either turn_secret or turn_secret_file"])
        secret_file = ice.turn_secret_file
        if not secret_file.is_absolute():
            secret_file = path.parent / secret_file
        try:
            ice.turn_secret = secret_file.read_text().rstrip("\n")
        except OSError as exc:
            raise ConfigError([f"ice.turn_secret_file: cannot read {secret_file}: "
                               f"{exc.strerror}"]) from None
        if len(ice.turn_secret) < 16:
            raise ConfigError(["ice.turn_secret_file: the secret must be at least 16 characters"])
    if ice.turn_secret is not None and not any(u.startswith(("turn:", "turns:")) for u in ice.urls):
        raise ConfigError(["ice.turn_secret: set, but ice.urls lists no turn: server"])
    return settings
