"""The configuration schema and `load(path)`: the only code that reads TOML or the environment.

A TOML file (see config/example.toml and config/README.md) is validated by pydantic-settings
models; `PEERPROXYD_<SECTION>__<KEY>` environment variables override the file. Every problem
becomes one line naming its dotted key, collected into a single `ConfigError`.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    ValidationInfo,
    WebsocketUrl,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from yarl import URL

from peerproxyd.errors import ConfigError
from peerproxyd.names import valid_service_name
from peerproxyd.protocol.http_headers import HOST_MODES, valid_host
from peerproxyd.trust.identity import default_state_dir

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

# The file `load()` is reading. pydantic-settings has no per-call TOML path (pydantic-settings
# issue #259), so `Settings.settings_customise_sources` reads it from here; a ContextVar keeps
# concurrent loads apart. It also anchors a relative `device.state_dir` and names the default one.
# The file being loaded and its table, while `load` validates it (relative paths and the
# default state directory depend on where the file is).
_loading: ContextVar[tuple[Path, dict[str, Any]] | None] = ContextVar(
    "peerproxyd_loading", default=None
)


def _toml_file() -> Path | None:
    loading = _loading.get()
    return loading[0] if loading else None

# Error type for a problem found by a model validator that belongs to one of the model's keys.
_KEY_ERROR = "peerproxyd_key"


def _key_error(key: str, message: str) -> PydanticCustomError:
    """A validation error reported at `<model loc>.<key>` rather than at the model itself."""
    return PydanticCustomError(_KEY_ERROR, "{key}: {message}", {"key": key, "message": message})


class _Section(BaseModel):
    """A TOML table: unknown keys are errors; attribute docstrings become field descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


REMOVED_DEVICE_KEYS = ("id", "secret", "secret_file")
"""[device] keys of releases before the device key: the id is derived from the key now."""
FRIENDLY_NAME_MAX = 64


class DeviceSettings(_Section):
    """`[device]`: where this daemon keeps its identity, and what to call it.

    The device id is not configured: it is derived from the device key in `state_dir`
    (docs/security.md 1.1), created on first start. `peerproxyd id --config FILE` prints it."""

    state_dir: Path | None = None
    """The directory of the device key and certificate (and later the viewer list); created
    (mode 0700) on first start. Back it up: a lost key is a new device id. A relative path is
    relative to the configuration file's directory. **Default:** `$STATE_DIRECTORY` (set by
    systemd's `StateDirectory=`), else `$XDG_STATE_HOME/peerproxyd/<config name>`, else
    `~/.local/state/peerproxyd/<config name>`, where `<config name>` is the configuration
    file's name without `.toml`. After `load()` it always holds the directory."""

    name: str | None = None
    """A friendly name for people (e.g. "Garden camera"), shown in the LAN advertisement
    (DNS-SD TXT) and in logs; 1-64 printable characters. **Default:** unset."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_removed_keys(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in REMOVED_DEVICE_KEYS:
                if key in data:
                    raise _key_error(
                        key,
                        "no longer supported: the device id is now derived from the device key "
                        "in state_dir, and no secret is needed; remove id, secret and "
                        "secret_file from [device] (`peerproxyd id --config FILE` prints the id)",
                    )
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not 1 <= len(value) <= FRIENDLY_NAME_MAX or not value.isprintable():
            raise ValueError(
                f"must be 1-{FRIENDLY_NAME_MAX} printable characters, got {value[:80]!r}"
            )
        return value

    @model_validator(mode="after")
    def _resolve_state_dir(self) -> Self:
        if self.state_dir is None:
            toml_file = _toml_file()
            self.state_dir = default_state_dir(toml_file.stem if toml_file else "peerproxyd")
        else:
            self.state_dir = _resolve(self.state_dir.expanduser())
        return self

    @property
    def state_path(self) -> Path:
        """`state_dir`, resolved (it always is after validation)."""
        assert self.state_dir is not None
        return self.state_dir


def _resolve(path: Path) -> Path:
    """`path`, anchored at the directory of the file being loaded when it is relative."""
    toml_file = _toml_file()
    if path.is_absolute() or toml_file is None:
        return path
    return toml_file.parent / path


def _url_problem(exc: ValidationError) -> PydanticCustomError:
    """The first message of a URL type's ValidationError, re-raisable inside a validator."""
    return PydanticCustomError("url", "{message}", {"message": exc.errors()[0]["msg"]})


class SignalingSettings(_Section):
    """`[signaling]`: the rendezvous server this daemon keeps a WebSocket open to."""

    url: str
    """Required. The signaling server's WebSocket URL (`ws://` or `wss://`)."""

    reconnect_min: float = Field(default=0.5, gt=0)
    """Seconds to wait before the first reconnect attempt; doubled after each failure.
    **Default:** 0.5."""

    reconnect_max: float = Field(default=30.0, gt=0, validate_default=True)
    """The longest wait between reconnect attempts, in seconds; at least `reconnect_min`.
    **Default:** 30.0."""

    public_url: str | None = None
    """The base of share links, `http(s)://host[:port]`: viewers open
    `<scheme>://<device>--<service>.<host>[:port]/`. **Default:** unset: `url` with ws -> http,
    wss -> https, 127.0.0.1 and ::1 -> localhost, and the path dropped."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            return str(WebsocketUrl(value))
        except ValidationError as exc:
            raise _url_problem(exc) from None

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = HttpUrl(value)
        except ValidationError as exc:
            raise _url_problem(exc) from None
        if url.path not in (None, "", "/") or url.query is not None or url.fragment is not None:
            raise ValueError("must be http(s)://host[:port] without a path, query or fragment")
        return str(url).rstrip("/")

    @field_validator("reconnect_max")
    @classmethod
    def _check_backoff(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("reconnect_min")
        if low is not None and value < low:
            raise ValueError(f"must be at least reconnect_min ({low}), got {value}")
        return value


class ServiceSettings(_Section):
    """`[services.<name>]`: one local HTTP service browsers may reach."""

    max_request_body: int = Field(default=104_857_600, ge=0)
    """Largest request body in bytes a viewer may send to this service; a larger declared
    `Content-Length` is answered 413 before anything is read or sent upstream, a larger
    streamed body is cut off (the upstream connection dropped) and answered 413. 0: no limit.
    **Default:** 104857600 (100 MiB: photos, firmware images and configuration uploads fit;
    raise it for e.g. Home Assistant backup uploads)."""

    upstream: str
    """Required. Base URL of the local service (`http` or `https`, with a host, no query or
    fragment). A path prefix is allowed; it is stored without a trailing slash."""

    connect_timeout: float = Field(default=5.0, gt=0)
    """Seconds to connect to the upstream; a refused or unreachable upstream answers 502.
    **Default:** 5.0."""

    read_timeout: float = Field(default=300.0, gt=0)
    """Seconds the upstream may take to answer with a response head once the request body
    stopped moving; then 504. A response body may then be quiet as long as it likes (event
    streams, long polls, cameras): the viewer or the end of the session ends it.
    **Default:** 300.0."""

    host: str = "viewer"
    """The Host header the upstream gets: `"viewer"` the one the viewer used (the share
    link's host; apps that compare Origin with Host need it), `"upstream"` the upstream
    URL's, or a literal `host[:port]`. **Default:** "viewer"."""

    forwarded_for: bool = False
    """Send the viewer's IP address (of the selected ICE pair) as `X-Forwarded-For` and
    `Forwarded: for=`. Off by default: Home Assistant answers 400 to such headers from a
    proxy it does not trust. **Default:** false."""

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if value not in HOST_MODES and not valid_host(value):
            raise ValueError(f'must be "viewer", "upstream" or a host[:port], got {value!r}')
        return value

    @property
    def upstream_host(self) -> str:
        """The upstream URL's `host[:port]`, as an HTTP client would send it."""
        url = URL(self.upstream)
        return url.host_port_subcomponent or ""

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        try:
            url = HttpUrl(value)
        except ValidationError as exc:
            raise _url_problem(exc) from None
        if url.query is not None or url.fragment is not None:
            raise ValueError("must not have a query or fragment")
        return str(url).rstrip("/")


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


IceUrl = Annotated[str, AfterValidator(_check_ice_url)]
IpAddress = Annotated[str, AfterValidator(_check_ip_address)]


class IceServer(_Section):
    """One entry of `[ice] servers`: a STUN or TURN server, as in RTCIceServer."""

    urls: list[IceUrl] = Field(min_length=1)
    """Required. `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]` or `turns:...`;
    a single string or a list of them."""

    username: str | None = None
    """TURN user name; required for `turn:` and `turns:` URLs. **Default:** unset."""

    credential: str | None = None
    """TURN password; required for `turn:` and `turns:` URLs. **Default:** unset."""

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("username", "credential")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _check_turn_auth(self) -> Self:
        if not any(url.startswith("turn") for url in self.urls):
            return self
        missing = [key for key in ("username", "credential") if getattr(self, key) is None]
        if len(missing) == 2:
            raise ValueError("username and credential are required for turn: and turns: URLs")
        if missing:
            raise _key_error(missing[0], "required for turn: and turns: URLs")
        return self


class IceSettings(_Section):
    """`[ice]`: how peer connections find a path to browsers."""

    servers: list[IceServer] = []
    """STUN/TURN servers. **Default:** empty: no public server is ever contacted unless listed."""

    host_addresses: list[IpAddress] = []
    """IP addresses to gather host candidates on. **Default:** empty: every address except
    loopback (the aioice default)."""

    udp_receive_buffer: int = Field(default=4_194_304, ge=65_536, le=67_108_864)
    """SO_RCVBUF in bytes for the ICE UDP sockets, 65536..67108864. **Default:** 4194304."""

    mdns: bool = True
    """Offer host candidates as random `<uuid>.local` names and answer mDNS queries for them
    on the LAN (as browsers do), so no LAN address reaches the signaling server or a remote
    viewer. Loopback addresses are never hidden. **Default:** true."""

    port_range: str | None = None
    """UDP ports for ICE, `"50000-50010"` or one port `"50000"`: each concurrent peer takes one
    port (the same number on every host address); a peer beyond that is refused with an error.
    **Default:** unset: ports the kernel picks."""

    @field_validator("port_range")
    @classmethod
    def _check_port_range(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = re.fullmatch(r"\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?", value)
        if match is None:
            raise ValueError(f'must be "LOW-HIGH" or one port, e.g. "50000-50010", got {value!r}')
        low, high = int(match[1]), int(match[2] or match[1])
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"ports must be 1-65535 with LOW <= HIGH, got {value!r}")
        return f"{low}-{high}"


class TransportSettings(_Section):
    """`[transport]`: which WebRTC stack makes the peer connections (issue 7)."""

    backend: Literal["auto", "aiortc", "native"] = "auto"
    """`"aiortc"` (pure Python, always installed), `"native"` (libdatachannel-py, the
    `peerproxyd[native]` extra: Python >= 3.12 on x86_64/aarch64, ~4x less CPU per MB; at most
    one `[ice] host_addresses` entry) or `"auto"`: native when importable and the `[ice]`
    settings allow it, else aiortc. The log, the status panel and each connection report
    say which. **Default:** `"auto"`."""


class LimitsSettings(_Section):
    """`[limits]`: bounds on everything a remote peer controls."""

    stall_timeout: float = Field(default=60.0, gt=0)
    """Seconds a response may wait for the viewer's flow-control window (WINDOW) before its
    stream is reset, and that the data channel may stay above its high-water mark without
    draining at all before the whole peer is closed: a viewer that stops reading cannot hold upstream connections or
    daemon memory. **Default:** 60.0 (as nginx's `send_timeout`)."""

    max_peers: int = Field(default=32, ge=1)
    """Concurrent peer connections. **Default:** 32."""

    max_streams_per_peer: int = Field(default=128, ge=1, le=10_000)
    """Concurrent streams (requests) per peer, 1..10000. **Default:** 128."""

    max_header_bytes: int = Field(default=65_536, ge=1024, le=1_048_576)
    """Size limit of one request's header block in bytes, 1024..1048576. **Default:** 65536."""

    heartbeat_interval: float = Field(default=5.0, gt=0)
    """Seconds between HEARTBEAT frames. **Default:** 5.0."""

    heartbeat_timeout: float = Field(default=20.0, gt=0, validate_default=True)
    """A peer silent this many seconds is closed; more than `heartbeat_interval`.
    **Default:** 20.0."""

    handshake_timeout: float = Field(default=10.0, gt=0)
    """Seconds a new peer has, from its offer, to complete DTLS and viewer authentication
    (docs/security.md 1.5); then it is closed. **Default:** 10.0."""

    idle_timeout: float = Field(default=900.0, gt=0)
    """A peer with no open streams and no traffic other than heartbeats for this many
    seconds is closed. **Default:** 900.0 (15 minutes)."""

    @field_validator("heartbeat_timeout")
    @classmethod
    def _check_heartbeat(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("heartbeat_interval")
        if interval is not None and value <= interval:
            raise ValueError(f"must be greater than heartbeat_interval ({interval}), got {value}")
        return value


class LogSettings(_Section):
    """`[log]`."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level: debug, info, warning or error (case-insensitive). **Default:** info."""

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class DaemonSettings(_Section):
    """`[daemon]`: the process lifecycle."""

    drain_timeout: float = Field(default=10.0, ge=0)
    """On SIGTERM, seconds to let open requests finish before the daemon closes every peer
    (new requests meanwhile get 503). 0 closes at once. **Default:** 10.0."""

    panel: str | None = None
    """`HOST:PORT` of the status panel (status, services, viewers, share links with QR
    codes), e.g. `0.0.0.0:8099` for Home Assistant's Ingress. **Default:** unset (off)."""

    panel_allow: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    """Addresses or networks that may load the panel; everyone else gets 403. Home
    Assistant's Ingress proxy is `172.30.32.2`. **Default:** loopback only."""

    @field_validator("panel")
    @classmethod
    def _check_panel(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("panel_allow")
    @classmethod
    def _check_panel_allow(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"not an address or network: {value!r}") from None
        return values


def _check_service_name(name: str) -> str:
    if not valid_service_name(name):
        raise ValueError(
            "service name must be a lowercase DNS label of 1-29 characters "
            "(a-z, 0-9 and '-', not starting or ending with '-', no '--')"
        )
    return name


ServiceName = Annotated[str, AfterValidator(_check_service_name)]


class Settings(BaseSettings):
    """The whole configuration: the TOML file, overridden by `PEERPROXYD_*` variables."""

    model_config = SettingsConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        env_prefix="PEERPROXYD_",
        env_nested_delimiter="__",
    )

    device: DeviceSettings = Field(default_factory=DeviceSettings)
    """`[device]`. **Default:** all defaults."""

    signaling: SignalingSettings
    """Required. `[signaling]`."""

    services: dict[ServiceName, ServiceSettings] = {}
    """`[services.<name>]` tables; at least one. The name is a lowercase DNS label of at most
    29 characters; browsers reach the service as `<device>--<name>`."""

    ice: IceSettings = Field(default_factory=IceSettings)
    """`[ice]`. **Default:** all defaults."""

    transport: TransportSettings = Field(default_factory=TransportSettings)
    """`[transport]`. **Default:** all defaults."""

    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    """`[limits]`. **Default:** all defaults."""

    log: LogSettings = Field(default_factory=LogSettings)
    """`[log]`. **Default:** all defaults."""

    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    """`[daemon]`. **Default:** all defaults."""

    @field_validator("services")
    @classmethod
    def _at_least_one(cls, value: dict[str, ServiceSettings]) -> dict[str, ServiceSettings]:
        if not value:
            raise ValueError("at least one [services.<name>] table is required")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: keyword arguments, then the environment, then the file.
        loading = _loading.get()
        toml = InitSettingsSource(settings_cls, init_kwargs=loading[1] if loading else {})
        return init_settings, env_settings, toml


def load(path: str | Path) -> Settings:
    """Read and validate the TOML file at `path`, with `PEERPROXYD_*` overrides applied.

    Raises `ConfigError` whose `problems` hold one line per problem, each naming its key.
    """
    path = Path(path)
    token = _loading.set((path, read_toml(path)))
    try:
        return Settings()  # type: ignore[call-arg]  # fields come from the sources
    except ValidationError as exc:
        raise ConfigError([problem(error) for error in exc.errors(include_url=False)]) from None
    except SettingsError as exc:
        # e.g. PEERPROXYD_ICE__HOST_ADDRESSES=127.0.0.1: lists and tables must be JSON.
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise ConfigError([f"environment: {exc}{cause} (lists and tables are JSON)"]) from None
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


def problem(error: ErrorDetails) -> str:
    """One pydantic error as `dotted.key: message`."""
    loc = [str(part) for part in error["loc"] if part != "[key]"]
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key: {'.'.join(loc)}"
    if kind == "missing":
        message = "required"
    elif kind == _KEY_ERROR:
        loc.append(error["ctx"]["key"])
        message = error["ctx"]["message"]
    elif kind == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"]
    return f"{'.'.join(loc)}: {message}" if loc else message
