"""`[ice] mdns` and `[ice] port_range`: defaults, accepted forms, exact error lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from peerproxyd.config import IceSettings, load
from peerproxyd.errors import ConfigError

BASE = """\
[device]
name = "Camera Pi"

[signaling]
url = "ws://127.0.0.1:8787/ws"

[services.camera]
upstream = "http://127.0.0.1:8081"

[ice]
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.upper().startswith("PEERPROXYD_"):
            monkeypatch.delenv(name)


def load_ice(tmp_path: Path, lines: str) -> IceSettings:
    path = tmp_path / "peerproxyd.toml"
    path.write_text(BASE + lines, encoding="utf-8")
    return load(path).ice


def problems(tmp_path: Path, lines: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_ice(tmp_path, lines)
    return info.value.problems


def test_defaults(tmp_path):
    ice = load_ice(tmp_path, "")
    assert ice.mdns is True and ice.port_range is None


def test_mdns_off(tmp_path):
    assert load_ice(tmp_path, "mdns = false\n").mdns is False


def test_mdns_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PEERPROXYD_ICE__MDNS", "false")
    assert load_ice(tmp_path, "").mdns is False


@pytest.mark.parametrize(
    "value, normalized",
    [("50000-50010", "50000-50010"), ("50000", "50000-50000"), (" 40000 - 40001 ", "40000-40001")],
)
def test_port_range_forms(tmp_path, value, normalized):
    assert load_ice(tmp_path, f'port_range = "{value}"\n').port_range == normalized


ORDER = "ice.port_range: ports must be 1-65535 with LOW <= HIGH,"
FORM = 'ice.port_range: must be "LOW-HIGH" or one port, e.g. "50000-50010",'


@pytest.mark.parametrize(
    "value, message",
    [
        ('"50010-50000"', f"{ORDER} got '50010-50000'"),
        ('"0-10"', f"{ORDER} got '0-10'"),
        ('"50000-70000"', f"{ORDER} got '50000-70000'"),
        ('"5000O"', f"{FORM} got '5000O'"),
        ('"50000:50010"', f"{FORM} got '50000:50010'"),
    ],
)
def test_port_range_problems(tmp_path, value, message):
    assert problems(tmp_path, f"port_range = {value}\n") == [message]


def test_port_range_must_be_a_string(tmp_path):
    [problem] = problems(tmp_path, "port_range = 50000\n")
    assert problem.startswith("ice.port_range: ")


def test_mdns_must_be_a_boolean(tmp_path):
    [problem] = problems(tmp_path, 'mdns = "sometimes"\n')
    assert problem.startswith("ice.mdns: ")
