"""The configuration schema and `load(path)`: the only code that reads TOML or the environment.

A TOML file (see config/example.toml and config/README.md) is validated by the `Table`
dataclasses below (peerproxyd.schema); `PEERPROXYD_<SECTION>__<KEY>` environment variables
override the file. Every problem becomes one line naming its dotted key, collected into a
single `ConfigError`.
"""

from __future__ import annotations

import ipaddress
import os
import os
import re
import tomllib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from yarl import URL

from peerproxyd.errors import ConfigError
from peerproxyd.names import valid_service_name
from peerproxyd.protocol.http_headers import HOST_MODES, valid_host
from peerproxyd.schema import Table, build, environment, merge, parse_url, setting

__all__ = [
    "DaemonSettings",
    "DeviceSettings",
    "IceServer",
    "IceSettings",
    "LimitsSettings",
    "LogSettings",
    "ServiceSettings",
    "Settings",
    "SignalingSettings",
    "load",
]

ICE_URL_RE = re.compile(
    r"^(?P<scheme>[a-z]+):(?P<host>[^\s:?/@\[\]]+)(:(?P<port>[0-9]{1,5}))?"
    r"(\?transport=(?P<transport>udp|tcp))?$"
)
ICE_SCHEMES = ("stun", "turn", "turns")

# The file `load()` is reading: a relative `device.state_dir` is relative to its directory,
# and its name names the default one. A ContextVar keeps concurrent loads apart.
_loading: ContextVar[Path | None] = ContextVar("peerproxyd_loading", default=None)


REMOVED_DEVICE_KEYS = ("id", "secret", "secret_file")
"""[device] keys of releases before the device key: the id is derived from the key now."""
FRIENDLY_NAME_MAX = 64
REMOVED_DEVICE_KEY = (
    "no longer supported: the device id is now derived from the device key in state_dir, and "
    "no secret is needed; remove id, secret and secret_file from [device] "
    "(`peerproxyd id --config FILE` prints the id)"
)


def _friendly_name(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not 1 <= len(value) <= FRIENDLY_NAME_MAX or not value.isprintable():
        raise ValueError(f"must be 1-{FRIENDLY_NAME_MAX} printable characters, got {value[:80]!r}")
    return value


def default_state_dir(config_name: str) -> Path:
    """`$STATE_DIRECTORY` (systemd), else `$XDG_STATE_HOME/peerproxyd/<config name>`, else
    `~/.local/state/peerproxyd/<config name>`. systemd may list several directories
    separated by ':'; the first is ours."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "peerproxyd" / config_name


def _state_dir(value: Path | None) -> Path:
    """The directory, anchored at the configuration file's; its default when unset."""
    toml_file = _loading.get()
    if value is None:
        return default_state_dir(toml_file.stem if toml_file else "peerproxyd")
    value = value.expanduser()
    if value.is_absolute() or toml_file is None:
        return value
    return toml_file.parent / value


@dataclass(kw_only=True)
class DeviceSettings(Table):
    """`[device]`: where this daemon keeps its identity, and what to call it.

    The device id is not configured: it is derived from the device key in `state_dir`
    (docs/security.md 1.1), created on first start. `peerproxyd id --config FILE` prints it."""

    removed_keys = dict.fromkeys(REMOVED_DEVICE_KEYS, REMOVED_DEVICE_KEY)

    state_dir: Path | None = setting(None, check=_state_dir)
    """The directory of the device key and certificate (and later the viewer list); created
    (mode 0700) on first start. Back it up: a lost key is a new device id. A relative path is
    relative to the configuration file's directory. **Default:** `$STATE_DIRECTORY` (set by
    systemd's `StateDirectory=`), else `$XDG_STATE_HOME/peerproxyd/<config name>`, else
    `~/.local/state/peerproxyd/<config name>`, where `<config name>` is the configuration
    file's name without `.toml`. After `load()` it always holds the directory."""

    name: str | None = setting(None, check=_friendly_name)
    """A friendly name for people (e.g. "Garden camera"), shown in the LAN advertisement
    (DNS-SD TXT) and in logs; 1-64 printable characters. **Default:** unset."""

    @property
    def state_path(self) -> Path:
        """`state_dir`, resolved (it always is after validation)."""
        assert self.state_dir is not None
        return self.state_dir


def _websocket_url(value: str) -> str:
    return str(parse_url(value, ("ws", "wss")))


def _public_url(value: str | None) -> str | None:
    if value is None:
        return None
    url = parse_url(value, ("http", "https"))
    if url.raw_path != "/" or "?" in value or "#" in value:
        raise ValueError("must be http(s)://host[:port] without a path, query or fragment")
    return str(url).rstrip("/")


@dataclass(kw_only=True)
class SignalingSettings(Table):
    """`[signaling]`: the rendezvous server this daemon keeps a WebSocket open to."""

    url: str = setting(check=_websocket_url)
    """Required. The signaling server's WebSocket URL (`ws://` or `wss://`)."""

    reconnect_min: float = setting(0.5, gt=0)
    """Seconds to wait before the first reconnect attempt; doubled after each failure.
    **Default:** 0.5."""

    reconnect_max: float = setting(30.0, gt=0)
    """The longest wait between reconnect attempts, in seconds; at least `reconnect_min`.
    **Default:** 30.0."""

    public_url: str | None = setting(None, check=_public_url)
    """The base of share links, `http(s)://host[:port]`: viewers open
    `<scheme>://<device>--<service>.<host>[:port]/`. **Default:** unset: `url` with ws -> http,
    wss -> https, 127.0.0.1 and ::1 -> localhost, and the path dropped."""

    def cross_check(self, valid: set[str]) -> Iterator[tuple[str, str]]:
        low, high = self.reconnect_min, self.reconnect_max
        if {"reconnect_min", "reconnect_max"} <= valid and high < low:
            yield "reconnect_max", f"must be at least reconnect_min ({low}), got {high}"


def _service_host(value: str) -> str:
    if value not in HOST_MODES and not valid_host(value):
        raise ValueError(f'must be "viewer", "upstream" or a host[:port], got {value!r}')
    return value


def _upstream(value: str) -> str:
    url = parse_url(value, ("http", "https"))
    if "?" in value or "#" in value:
        raise ValueError("must not have a query or fragment")
    return str(url).rstrip("/")


@dataclass(kw_only=True)
class ServiceSettings(Table):
    """`[services.<name>]`: one local HTTP service browsers may reach."""

    max_request_body: int = setting(104_857_600, ge=0)
    """Largest request body in bytes a viewer may send to this service; a larger declared
    `Content-Length` is answered 413 before anything is read or sent upstream, a larger
    streamed body is cut off (the upstream connection dropped) and answered 413. 0: no limit.
    **Default:** 104857600 (100 MiB: photos, firmware images and configuration uploads fit;
    raise it for e.g. Home Assistant backup uploads)."""

    upstream: str = setting(check=_upstream)
    """Required. Base URL of the local service (`http` or `https`, with a host, no query or
    fragment). A path prefix is allowed; it is stored without a trailing slash."""

    connect_timeout: float = setting(5.0, gt=0)
    """Seconds to connect to the upstream; a refused or unreachable upstream answers 502.
    **Default:** 5.0."""

    read_timeout: float = setting(300.0, gt=0)
    """Seconds the upstream may take to answer with a response head once the request body
    stopped moving; then 504. A response body may then be quiet as long as it likes (event
    streams, long polls, cameras): the viewer or the end of the session ends it.
    **Default:** 300.0."""

    host: str = setting("viewer", check=_service_host)
    """The Host header the upstream gets: `"viewer"` the one the viewer used (the share
    link's host; apps that compare Origin with Host need it), `"upstream"` the upstream
    URL's, or a literal `host[:port]`. **Default:** "viewer"."""

    forwarded_for: bool = False
    """Send the viewer's IP address (of the selected ICE pair) as `X-Forwarded-For` and
    `Forwarded: for=`. Off by default: Home Assistant answers 400 to such headers from a
    proxy it does not trust. **Default:** false."""

    @property
    def upstream_host(self) -> str:
        """The upstream URL's `host[:port]`, as an HTTP client would send it."""
        url = URL(self.upstream)
        return url.host_port_subcomponent or ""


def _check_ice_url(value: str) -> str:
    match = ICE_URL_RE.match(value)
    if match is None or match["scheme"] not in ICE_SCHEMES:
        scheme = value.split(":", 1)[0] if ":" in value else ""
        if scheme not in ICE_SCHEMES:
            raise ValueError(f"ICE URL scheme should be 'stun', 'turn' or 'turns', got {value!r}")
        raise ValueError(
            f"not an ICE URL (stun:host[:port] or turn[s]:host[:port][?transport=udp|tcp]): "
            f"{value!r}"
        )
    if match["scheme"] == "stun" and match["transport"] is not None:
        raise ValueError(f"?transport= is only allowed on turn: and turns: URLs, got {value!r}")
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"port must be 1-65535, got {value!r}")
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) -> (host, port); ValueError if it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _check_ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


IceUrl = Annotated[str, _check_ice_url]
IpAddress = Annotated[str, _check_ip_address]


def _one_url(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _empty_is_unset(value: str | None) -> str | None:
    return value or None


@dataclass(kw_only=True)
class IceServer(Table):
    """One entry of `[ice] servers`: a STUN or TURN server, as in RTCIceServer."""

    urls: list[IceUrl] = setting(min_length=1, before=_one_url)
    """Required. `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]` or `turns:...`;
    a single string or a list of them."""

    username: str | None = setting(None, check=_empty_is_unset)
    """TURN user name; required for `turn:` and `turns:` URLs. **Default:** unset."""

    credential: str | None = setting(None, check=_empty_is_unset)
    """TURN password; required for `turn:` and `turns:` URLs. **Default:** unset."""

    def cross_check(self, valid: set[str]) -> Iterator[tuple[str, str]]:
        if valid != {"urls", "username", "credential"}:
            return
        if not any(url.startswith("turn") for url in self.urls):
            return
        missing = [key for key in ("username", "credential") if getattr(self, key) is None]
        if len(missing) == 2:
            yield "", "username and credential are required for turn: and turns: URLs"
        elif missing:
            yield missing[0], "required for turn: and turns: URLs"


def _port_range(value: str | None) -> str | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?", value)
    if match is None:
        raise ValueError(f'must be "LOW-HIGH" or one port, e.g. "50000-50010", got {value!r}')
    low, high = int(match[1]), int(match[2] or match[1])
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"ports must be 1-65535 with LOW <= HIGH, got {value!r}")
    return f"{low}-{high}"


@dataclass(kw_only=True)
class IceSettings(Table):
    """`[ice]`: how peer connections find a path to browsers."""

    servers: list[IceServer] = setting(factory=list)
    """STUN/TURN servers. **Default:** empty: no public server is ever contacted unless listed."""

    host_addresses: list[IpAddress] = setting(factory=list)
    """IP addresses to gather host candidates on. **Default:** empty: every address except
    loopback (the aioice default)."""

    udp_receive_buffer: int = setting(4_194_304, ge=65_536, le=67_108_864)
    """SO_RCVBUF in bytes for the ICE UDP sockets, 65536..67108864. **Default:** 4194304."""

    mdns: bool = True
    """Offer host candidates as random `<uuid>.local` names and answer mDNS queries for them
    on the LAN (as browsers do), so no LAN address reaches the signaling server or a remote
    viewer. Loopback addresses are never hidden. **Default:** true."""

    port_range: str | None = setting(None, check=_port_range)
    """UDP ports for ICE, `"50000-50010"` or one port `"50000"`: each concurrent peer takes one
    port (the same number on every host address); a peer beyond that is refused with an error.
    **Default:** unset: ports the kernel picks."""


@dataclass(kw_only=True)
class TransportSettings(Table):
    """`[transport]`: which WebRTC stack makes the peer connections (issue 7)."""

    backend: Literal["auto", "aiortc", "native"] = "auto"
    """`"aiortc"` (pure Python, always installed), `"native"` (libdatachannel-py, the
    `peerproxyd[native]` extra: Python >= 3.12 on x86_64/aarch64, ~4x less CPU per MB; at most
    one `[ice] host_addresses` entry) or `"auto"`: native when importable and the `[ice]`
    settings allow it, else aiortc. The log, the status panel and each connection report
    say which. **Default:** `"auto"`."""


@dataclass(kw_only=True)
class LimitsSettings(Table):
    """`[limits]`: bounds on everything a remote peer controls."""

    stall_timeout: float = setting(60.0, gt=0)
    """Seconds a response may wait for the viewer's flow-control window (WINDOW) before its
    stream is reset, and that the data channel may stay above its high-water mark without
    draining at all before the whole peer is closed: a viewer that stops reading cannot hold upstream connections or
    daemon memory. **Default:** 60.0 (as nginx's `send_timeout`)."""

    max_peers: int = setting(32, ge=1)
    """Concurrent peer connections. **Default:** 32."""

    max_streams_per_peer: int = setting(128, ge=1, le=10_000)
    """Concurrent streams (requests) per peer, 1..10000. **Default:** 128."""

    max_header_bytes: int = setting(65_536, ge=1024, le=1_048_576)
    """Size limit of one request's header block in bytes, 1024..1048576. **Default:** 65536."""

    heartbeat_interval: float = setting(5.0, gt=0)
    """Seconds between HEARTBEAT frames. **Default:** 5.0."""

    heartbeat_timeout: float = setting(20.0, gt=0)
    """A peer silent this many seconds is closed; more than `heartbeat_interval`.
    **Default:** 20.0."""

    handshake_timeout: float = setting(10.0, gt=0)
    """Seconds a new peer has, from its offer, to complete DTLS and viewer authentication
    (docs/security.md 1.5); then it is closed. **Default:** 10.0."""

    idle_timeout: float = setting(900.0, gt=0)
    """A peer with no open streams and no traffic other than heartbeats for this many
    seconds is closed. **Default:** 900.0 (15 minutes)."""

    def cross_check(self, valid: set[str]) -> Iterator[tuple[str, str]]:
        interval, timeout = self.heartbeat_interval, self.heartbeat_timeout
        if {"heartbeat_interval", "heartbeat_timeout"} <= valid and timeout <= interval:
            yield "heartbeat_timeout", (
                f"must be greater than heartbeat_interval ({interval}), got {timeout}"
            )


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


@dataclass(kw_only=True)
class LogSettings(Table):
    """`[log]`."""

    level: Literal["debug", "info", "warning", "error"] = setting("info", before=_lower)
    """Log level: debug, info, warning or error (case-insensitive). **Default:** info."""


def _panel(value: str | None) -> str | None:
    if value is not None:
        parse_listen(value)
    return value


def _networks(values: list[str]) -> list[str]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"not an address or network: {value!r}") from None
    return values


@dataclass(kw_only=True)
class DaemonSettings(Table):
    """`[daemon]`: the process lifecycle."""

    drain_timeout: float = setting(10.0, ge=0)
    """On SIGTERM, seconds to let open requests finish before the daemon closes every peer
    (new requests meanwhile get 503). 0 closes at once. **Default:** 10.0."""

    panel: str | None = setting(None, check=_panel)
    """`HOST:PORT` of the status panel (status, services, viewers, share links with QR
    codes), e.g. `0.0.0.0:8099` for Home Assistant's Ingress. **Default:** unset (off)."""

    panel_allow: list[str] = setting(factory=lambda: ["127.0.0.1", "::1"], check=_networks)
    """Addresses or networks that may load the panel; everyone else gets 403. Home
    Assistant's Ingress proxy is `172.30.32.2`. **Default:** loopback only."""


def _check_service_name(name: str) -> str:
    if not valid_service_name(name):
        raise ValueError(
            "service name must be a lowercase DNS label of 1-29 characters "
            "(a-z, 0-9 and '-', not starting or ending with '-', no '--')"
        )
    return name


ServiceName = Annotated[str, _check_service_name]


def _at_least_one(value: dict[str, ServiceSettings]) -> dict[str, ServiceSettings]:
    if not value:
        raise ValueError("at least one [services.<name>] table is required")
    return value


@dataclass(kw_only=True)
class Settings(Table):
    """The whole configuration: the TOML file, overridden by `PEERPROXYD_*` variables."""

    device: DeviceSettings = setting(factory=DeviceSettings)
    """`[device]`. **Default:** all defaults."""

    signaling: SignalingSettings = setting()
    """Required. `[signaling]`."""

    services: dict[ServiceName, ServiceSettings] = setting(factory=dict, check=_at_least_one)
    """`[services.<name>]` tables; at least one. The name is a lowercase DNS label of at most
    29 characters; browsers reach the service as `<device>--<name>`."""

    ice: IceSettings = setting(factory=IceSettings)
    """`[ice]`. **Default:** all defaults."""

    transport: TransportSettings = setting(factory=TransportSettings)
    """`[transport]`. **Default:** all defaults."""

    limits: LimitsSettings = setting(factory=LimitsSettings)
    """`[limits]`. **Default:** all defaults."""

    log: LogSettings = setting(factory=LogSettings)
    """`[log]`. **Default:** all defaults."""

    daemon: DaemonSettings = setting(factory=DaemonSettings)
    """`[daemon]`. **Default:** all defaults."""


def load(path: str | Path) -> Settings:
    """Read and validate the TOML file at `path`, with `PEERPROXYD_*` overrides applied.

    Raises `ConfigError` whose `problems` hold one line per problem, each naming its key.
    """
    path = Path(path)
    data = merge(read_toml(path), environment(Settings, "PEERPROXYD_", os.environ))
    token = _loading.set(path)
    try:
        return build(Settings, data)
    finally:
        _loading.reset(token)


def read_toml(path: Path) -> dict[str, Any]:
    """The table of the TOML file at `path`; a `ConfigError` saying why it cannot be read."""
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
