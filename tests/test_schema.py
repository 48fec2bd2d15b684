"""peerproxyd.schema, the typed tables under config.py: what the configuration tests take for
granted (direct construction validates, documentation is read, the environment's shape)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from peerproxyd.config import DeviceSettings, IceServer, IceSettings, ServiceSettings, Settings
from peerproxyd.errors import ConfigError
from peerproxyd.schema import Table, environment, field_docs, setting


@dataclasses.dataclass(kw_only=True)
class Sample(Table):
    documented: int = setting(1, ge=0)
    """Some number."""

    undocumented: list[str] = setting(factory=list)


def test_field_docs_reads_the_line_under_each_field() -> None:
    assert field_docs(Sample) == {"documented": "Some number."}
    assert field_docs(DeviceSettings)["name"].startswith("A friendly name for people")


def test_constructing_a_table_converts_and_validates() -> None:
    ice = IceSettings(servers=[{"urls": "turn:t.example.net", "username": "u", "credential": "c"}],
                      host_addresses=["0:0:0:0:0:0:0:1"])
    assert ice.servers == [IceServer(urls=["turn:t.example.net"], username="u", credential="c")]
    assert ice.host_addresses == ["::1"]
    assert DeviceSettings(state_dir="/srv/state").state_dir == Path("/srv/state")  # type: ignore[arg-type]
    assert ServiceSettings(upstream="HTTP://[::1]:8443/x/").upstream == "http://[::1]:8443/x"
    with pytest.raises(ConfigError) as info:
        Sample(documented=-1, undocumented=["a", 2])  # type: ignore[list-item]
    assert info.value.problems == ["documented: Input should be greater than or equal to 0",
                                   "undocumented.1: Input should be a valid string"]


def test_replace_keeps_a_valid_table_and_checks_the_new_value() -> None:
    service = ServiceSettings(upstream="http://127.0.0.1:8081")
    assert dataclasses.replace(service, read_timeout=7).read_timeout == 7.0
    with pytest.raises(ConfigError, match="^read_timeout: Input should be greater than 0$"):
        dataclasses.replace(service, read_timeout=0)


def test_environment_shape() -> None:
    env = {
        "PEERPROXYD_ICE__HOST_ADDRESSES": '["127.0.0.1"]',  # a list: JSON
        "peerproxyd_services__camera__read_timeout": "7.5",  # names are case-insensitive
        "PEERPROXYD_LIMITS__MAX_PEERS": "4",  # a scalar: the string, converted later
        "PEERPROXYD_DEBUG": "1",  # not a table of Settings: ignored
        "OTHER_LIMITS__MAX_PEERS": "9",
    }
    assert environment(Settings, "PEERPROXYD_", env) == {
        "ice": {"host_addresses": ["127.0.0.1"]},
        "services": {"camera": {"read_timeout": "7.5"}},
        "limits": {"max_peers": "4"},
    }
