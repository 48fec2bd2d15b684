"""peerproxyd.config: the example loads, and every problem is one exact line naming its key."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from peerproxyd import config
from peerproxyd.config import IceServer, Settings, load
from peerproxyd.errors import ConfigError
from peerproxyd.schema import Table, field_docs

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example.toml"

BASE = """\
[device]
name = "Camera Pi"

[signaling]
url = "ws://127.0.0.1:8787/ws"

[services.camera]
upstream = "http://127.0.0.1:8081"
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PEERPROXYD_* variable of the caller's shell leaks into these tests."""
    for name in os.environ:
        if name.upper().startswith("PEERPROXYD_"):
            monkeypatch.delenv(name)


def edit(*pairs: tuple[str, str], text: str = BASE) -> str:
    """BASE with each (old, new) replaced once; fails if `old` is not there."""
    for old, new in pairs:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "peerproxyd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# -- loading ------------------------------------------------------------------------------


def test_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    settings = load(EXAMPLE)
    assert isinstance(settings, Settings)
    assert dataclasses.asdict(settings) == {
        "device": {"state_dir": tmp_path / "peerproxyd" / "example", "name": "Camera Pi"},
        "signaling": {"url": "ws://127.0.0.1:8787/ws", "reconnect_min": 0.5, "reconnect_max": 30.0,
                      "public_url": None},
        "services": {
            "camera": {
                "max_request_body": 104857600,
                "upstream": "http://127.0.0.1:8081",
                "connect_timeout": 5.0,
                "read_timeout": 300.0,
                "host": "viewer",
                "forwarded_for": False,
            },
            "ha": {
                "max_request_body": 104857600,
                "upstream": "http://127.0.0.1:8123",
                "connect_timeout": 5.0,
                "read_timeout": 300.0,
                "host": "viewer",
                "forwarded_for": False,
            },
        },
        "ice": {
            "servers": [],
            "host_addresses": [],
            "udp_receive_buffer": 4194304,
            "mdns": True,
            "port_range": None,
        },
        "transport": {"backend": "auto"},
        "limits": {
            "stall_timeout": 60.0,
            "max_peers": 32,
            "max_streams_per_peer": 128,
            "max_header_bytes": 65536,
            "heartbeat_interval": 5.0,
            "heartbeat_timeout": 20.0,
            "handshake_timeout": 10.0,
            "idle_timeout": 900.0,
        },
        "log": {"level": "info"},
        "daemon": {"drain_timeout": 10.0, "panel": None, "panel_allow": ["127.0.0.1", "::1"]},
    }


def test_load_accepts_str_path() -> None:
    assert load(str(EXAMPLE)).device.name == "Camera Pi"


def test_every_field_is_documented() -> None:
    models: list[type[Table]] = [
        Settings,
        config.DeviceSettings,
        config.SignalingSettings,
        config.ServiceSettings,
        IceServer,
        config.IceSettings,
        config.TransportSettings,
        config.LimitsSettings,
        config.LogSettings,
    ]
    undocumented = [
        f"{model.__name__}.{field.name}"
        for model in models
        for field in dataclasses.fields(model)
        if not field_docs(model).get(field.name)
    ]
    assert undocumented == []


def test_values_are_normalized(tmp_path: Path) -> None:
    text = edit(
        ('upstream = "http://127.0.0.1:8081"', 'upstream = "HTTP://LocalHost:8123/ha/"'),
        text=BASE
        + """
[ice]
host_addresses = ["127.0.0.1", "0:0:0:0:0:0:0:1"]

[[ice.servers]]
urls = "stun:stun.example.net:3478"

[[ice.servers]]
urls = ["turn:turn.example.net?transport=tcp", "turns:turn.example.net:5349"]
username = "me"
credential = "pw"

[log]
level = "DEBUG"
""",
    )
    settings = load(write(tmp_path, text))
    assert settings.services["camera"].upstream == "http://localhost:8123/ha"
    assert settings.ice.servers == [
        IceServer(urls=["stun:stun.example.net:3478"], username=None, credential=None),
        IceServer(
            urls=["turn:turn.example.net?transport=tcp", "turns:turn.example.net:5349"],
            username="me",
            credential="pw",
        ),
    ]
    assert settings.ice.host_addresses == ["127.0.0.1", "::1"]
    assert settings.log.level == "debug"


# -- one problem, one line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('colour = "red"\n' + BASE, "unknown key: colour", id="top-level"),
        pytest.param(
            edit(('name = "Camera Pi"', 'name = "Camera Pi"\ncolour = "red"')),
            "unknown key: device.colour",
            id="nested",
        ),
        pytest.param(
            BASE + "timeout = 3\n",
            "unknown key: services.camera.timeout",
            id="service",
        ),
        pytest.param(
            BASE + '[ice]\nservers = [{ urls = "stun:h", password = "x" }]\n',
            "unknown key: ice.servers.0.password",
            id="ice-server",
        ),
    ],
)
def test_unknown_key(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(tmp_path, text) == [expected]


@pytest.mark.parametrize("key", ["id", "secret", "secret_file"])
def test_removed_device_keys_say_the_id_is_derived(tmp_path: Path, key: str) -> None:
    text = edit(('name = "Camera Pi"', f'{key} = "camera-pi-secret"'))
    assert problems(tmp_path, text) == [
        f"device.{key}: no longer supported: the device id is now derived from the device key "
        "in state_dir, and no secret is needed; remove id, secret and secret_file from [device] "
        "(`peerproxyd id --config FILE` prints the id)"
    ]


def test_removed_device_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEERPROXYD_DEVICE__ID", "garage-pi")
    assert problems(tmp_path, BASE)[0].startswith("device.id: no longer supported: ")


def test_state_dir_default_is_systemds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert load(write(tmp_path, BASE)).device.state_dir == tmp_path / "a"


def test_state_dir_default_is_per_config_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "garden.toml"
    path.write_text(BASE)
    assert load(path).device.state_dir == tmp_path / "xdg" / "peerproxyd" / "garden"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load(path).device.state_dir == tmp_path / "home/.local/state/peerproxyd/garden"


def test_state_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    text = edit(('name = "Camera Pi"', 'state_dir = "state"'))
    assert load(write(tmp_path, text)).device.state_dir == tmp_path / "state"


def test_state_dir_absolute(tmp_path: Path) -> None:
    text = edit(('name = "Camera Pi"', f'state_dir = "{tmp_path}/abs"'))
    assert load(write(tmp_path, text)).device.state_dir == tmp_path / "abs"


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "tab\there"])
def test_bad_friendly_name(tmp_path: Path, name: str) -> None:
    text = edit(('"Camera Pi"', f'"{name}"'))
    [problem] = problems(tmp_path, text)
    assert problem.startswith("device.name: must be 1-64 printable characters, got ")


def test_device_table_is_optional(tmp_path: Path) -> None:
    device = load(write(tmp_path, edit(('[device]\nname = "Camera Pi"\n', "")))).device
    assert device.name is None
    assert device.state_dir is not None


def test_bad_service_name(tmp_path: Path) -> None:
    text = edit(("[services.camera]", "[services.-cam]"))
    assert problems(tmp_path, text) == [
        "services.-cam: service name must be a lowercase DNS label of 1-29 characters "
        "(a-z, 0-9 and '-', not starting or ending with '-', no '--')"
    ]


def test_service_name_of_29_characters(tmp_path: Path) -> None:
    text = edit(("[services.camera]", f"[services.{'s' * 29}]"))
    assert list(load(write(tmp_path, text)).services) == ["s" * 29]
    text = edit(("[services.camera]", f"[services.{'s' * 30}]"))
    assert problems(tmp_path, text) == [
        f"services.{'s' * 30}: service name must be a lowercase DNS label of 1-29 characters "
        "(a-z, 0-9 and '-', not starting or ending with '-', no '--')"
    ]


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ("ftp://127.0.0.1:8081", "URL scheme should be 'http' or 'https'"),
        ("http://", "Input should be a valid URL, empty host"),
        ("http://127.0.0.1:8081/?a=1", "must not have a query or fragment"),
        ("http://127.0.0.1:8081/#top", "must not have a query or fragment"),
    ],
)
def test_bad_upstream(tmp_path: Path, upstream: str, expected: str) -> None:
    text = edit(('"http://127.0.0.1:8081"', f'"{upstream}"'))
    assert problems(tmp_path, text) == [f"services.camera.upstream: {expected}"]


def test_bad_signaling_url(tmp_path: Path) -> None:
    text = edit(('"ws://127.0.0.1:8787/ws"', '"https://127.0.0.1:8787/ws"'))
    assert problems(tmp_path, text) == ["signaling.url: URL scheme should be 'ws' or 'wss'"]


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("ws://p.example.net", "signaling.public_url: URL scheme should be 'http' or 'https'"),
        ("https://p.example.net/x", "signaling.public_url: must be http(s)://host[:port] "
         "without a path, query or fragment"),
    ],
)
def test_bad_public_url(tmp_path: Path, public_url: str, expected: str) -> None:
    text = edit(('"ws://127.0.0.1:8787/ws"', f'"ws://127.0.0.1:8787/ws"\npublic_url = "{public_url}"'))
    assert problems(tmp_path, text) == [expected]


def test_public_url_is_normalized(tmp_path: Path) -> None:
    text = edit(('"ws://127.0.0.1:8787/ws"', '"ws://127.0.0.1:8787/ws"\npublic_url = "HTTPS://P.example.net/"'))
    assert load(write(tmp_path, text)).signaling.public_url == "https://p.example.net"


@pytest.mark.parametrize(
    ("old", "expected"),
    [
        ('url = "ws://127.0.0.1:8787/ws"\n', "signaling.url: required"),
        ('upstream = "http://127.0.0.1:8081"\n', "services.camera.upstream: required"),
        ('[signaling]\nurl = "ws://127.0.0.1:8787/ws"\n', "signaling: required"),
        (
            '[services.camera]\nupstream = "http://127.0.0.1:8081"\n',
            "services: at least one [services.<name>] table is required",
        ),
    ],
)
def test_missing_required(tmp_path: Path, old: str, expected: str) -> None:
    assert problems(tmp_path, edit((old, ""))) == [expected]


# -- ICE ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        (
            '[{ urls = "http://stun.example.net" }]',
            "ice.servers.0.urls.0: ICE URL scheme should be 'stun', 'turn' or 'turns', "
            "got 'http://stun.example.net'",
        ),
        (
            '[{ urls = ["stun:a", "stun://b"] }]',
            "ice.servers.0.urls.1: not an ICE URL (stun:host[:port] or "
            "turn[s]:host[:port][?transport=udp|tcp]): 'stun://b'",
        ),
        (
            '[{ urls = "stun:a?transport=udp" }]',
            "ice.servers.0.urls.0: ?transport= is only allowed on turn: and turns: URLs, "
            "got 'stun:a?transport=udp'",
        ),
        (
            '[{ urls = "stun:a:70000" }]',
            "ice.servers.0.urls.0: port must be 1-65535, got 'stun:a:70000'",
        ),
        (
            "[{ urls = [] }]",
            "ice.servers.0.urls: List should have at least 1 item after validation, not 0",
        ),
    ],
)
def test_bad_ice_url(tmp_path: Path, servers: str, expected: str) -> None:
    assert problems(tmp_path, BASE + f"[ice]\nservers = {servers}\n") == [expected]


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        (
            '{ urls = "turn:t.example.net", username = "me" }',
            "ice.servers.1.credential: required for turn: and turns: URLs",
        ),
        (
            '{ urls = "turns:t.example.net", username = "", credential = "pw" }',
            "ice.servers.1.username: required for turn: and turns: URLs",
        ),
        (
            '{ urls = ["stun:s.example.net", "turn:t.example.net"] }',
            "ice.servers.1: username and credential are required for turn: and turns: URLs",
        ),
    ],
)
def test_turn_without_credentials(tmp_path: Path, server: str, expected: str) -> None:
    text = BASE + f'[ice]\nservers = [{{ urls = "stun:s.example.net" }}, {server}]\n'
    assert problems(tmp_path, text) == [expected]


def test_invalid_host_address(tmp_path: Path) -> None:
    text = BASE + '[ice]\nhost_addresses = ["127.0.0.1", "eth0"]\n'
    assert problems(tmp_path, text) == ["ice.host_addresses.1: not an IP address: 'eth0'"]


def test_udp_receive_buffer_range(tmp_path: Path) -> None:
    text = BASE + "[ice]\nudp_receive_buffer = 1024\n"
    assert problems(tmp_path, text) == [
        "ice.udp_receive_buffer: Input should be greater than or equal to 65536"
    ]


# -- cross-field rules and ranges ----------------------------------------------------------


def test_reconnect_max_below_reconnect_min(tmp_path: Path) -> None:
    text = edit(('/ws"\n', '/ws"\nreconnect_min = 5\nreconnect_max = 1\n'))
    assert problems(tmp_path, text) == [
        "signaling.reconnect_max: must be at least reconnect_min (5.0), got 1.0"
    ]


def test_reconnect_min_above_default_max(tmp_path: Path) -> None:
    text = edit(('/ws"\n', '/ws"\nreconnect_min = 60\n'))
    assert problems(tmp_path, text) == [
        "signaling.reconnect_max: must be at least reconnect_min (60.0), got 30.0"
    ]


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (
            "heartbeat_timeout = 5",
            "limits.heartbeat_timeout: must be greater than heartbeat_interval (5.0), got 5.0",
        ),
        (
            "heartbeat_interval = 30",
            "limits.heartbeat_timeout: must be greater than heartbeat_interval (30.0), got 20.0",
        ),
        ("max_peers = 0", "limits.max_peers: Input should be greater than or equal to 1"),
        (
            "max_streams_per_peer = 10001",
            "limits.max_streams_per_peer: Input should be less than or equal to 10000",
        ),
        (
            "max_header_bytes = 1023",
            "limits.max_header_bytes: Input should be greater than or equal to 1024",
        ),
        ("heartbeat_interval = 0", "limits.heartbeat_interval: Input should be greater than 0"),
    ],
)
def test_limits(tmp_path: Path, limits: str, expected: str) -> None:
    assert problems(tmp_path, BASE + f"[limits]\n{limits}\n") == [expected]


def test_bad_log_level(tmp_path: Path) -> None:
    assert problems(tmp_path, BASE + '[log]\nlevel = "loud"\n') == [
        "log.level: Input should be 'debug', 'info', 'warning' or 'error'"
    ]


# -- the file itself ----------------------------------------------------------------------


def test_invalid_toml(tmp_path: Path) -> None:
    text = edit(('url = "ws://127.0.0.1:8787/ws"', "url = ws://127.0.0.1:8787/ws"))
    assert problems(tmp_path, text) == ["invalid TOML: Invalid value (at line 5, column 7)"]


def test_toml_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.replace("Camera Pi", "Cam\xe9ra Pi").encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [f"invalid TOML: {path} is not UTF-8 text"]


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.toml")
    assert info.value.problems == [f"file not found: {tmp_path / 'missing.toml'}"]


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert info.value.problems == [f"not a regular file: {tmp_path}"]


def test_multiple_problems_are_reported_together(tmp_path: Path) -> None:
    text = edit(
        ('name = "Camera Pi"', 'name = ""\ncolour = "red"'),
        ('"ws://127.0.0.1:8787/ws"', '"ws://127.0.0.1:8787/ws"\nreconnect_min = 0'),
        ('"http://127.0.0.1:8081"', '"ftp://127.0.0.1:8081"'),
        text=BASE + "[limits]\nmax_peers = 0\nheartbeat_timeout = 1\n",
    )
    assert problems(tmp_path, text) == [
        "device.name: must be 1-64 printable characters, got ''",
        "unknown key: device.colour",
        "signaling.reconnect_min: Input should be greater than 0",
        "services.camera.upstream: URL scheme should be 'http' or 'https'",
        "limits.max_peers: Input should be greater than or equal to 1",
        "limits.heartbeat_timeout: must be greater than heartbeat_interval (5.0), got 1.0",
    ]


# -- environment overrides ----------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERPROXYD_DEVICE__STATE_DIR", str(tmp_path / "garage"))
    monkeypatch.setenv("PEERPROXYD_LIMITS__MAX_PEERS", "4")
    monkeypatch.setenv("PEERPROXYD_SERVICES__CAMERA__READ_TIMEOUT", "7.5")
    monkeypatch.setenv("PEERPROXYD_SERVICES__HA__UPSTREAM", "http://127.0.0.1:8123")
    monkeypatch.setenv("PEERPROXYD_ICE__HOST_ADDRESSES", '["127.0.0.1"]')
    monkeypatch.setenv("PEERPROXYD_LOG__LEVEL", "WARNING")
    monkeypatch.setenv("PEERPROXYD_DEBUG", "1")  # not a setting: ignored
    settings = load(write(tmp_path, BASE))
    assert settings.device.state_dir == tmp_path / "garage"
    assert settings.device.name == "Camera Pi"
    assert settings.limits.max_peers == 4
    assert dataclasses.asdict(settings.services["camera"]) == {
        "max_request_body": 104857600,
        "upstream": "http://127.0.0.1:8081",
        "connect_timeout": 5.0,
        "read_timeout": 7.5,
        "host": "viewer",
        "forwarded_for": False,
    }
    assert settings.services["ha"].upstream == "http://127.0.0.1:8123"
    assert settings.ice.host_addresses == ["127.0.0.1"]
    assert settings.log.level == "warning"


def test_environment_values_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERPROXYD_LIMITS__MAX_PEERS", "many")
    monkeypatch.setenv("PEERPROXYD_DEVICE__COLOUR", "red")
    assert problems(tmp_path, BASE) == [
        "unknown key: device.colour",
        "limits.max_peers: Input should be a valid integer, unable to parse string as an integer",
    ]


def test_environment_list_must_be_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERPROXYD_ICE__HOST_ADDRESSES", "127.0.0.1")
    assert problems(tmp_path, BASE) == [
        "environment: PEERPROXYD_ICE__HOST_ADDRESSES: not JSON (Extra data: line 1 column 6 "
        "(char 5)); lists and tables are JSON"
    ]


def test_service_host_must_be_a_mode_or_a_host(tmp_path: Path) -> None:
    text = BASE + '[services.grafana]\nupstream = "http://127.0.0.1:3000"\nhost = "a b"\n'
    with pytest.raises(ConfigError, match=r'services.grafana.host: .*"viewer", "upstream" or a host'):
        load(write(tmp_path, text))
