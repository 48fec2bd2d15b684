"""The `[daemon]` table: drain_timeout."""

from __future__ import annotations

import pytest

from peerproxyd.config import load
from peerproxyd.errors import ConfigError

BASE = (
    '[device]\nname = "Camera Pi"\n'
    '[signaling]\nurl = "ws://127.0.0.1:8787/ws"\n'
    '[services.camera]\nupstream = "http://127.0.0.1:8081"\n'
)


def test_default_drain_timeout_is_10_seconds(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(BASE)
    assert load(path).daemon.drain_timeout == 10.0


def test_drain_timeout_from_file_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text(BASE + "[daemon]\ndrain_timeout = 0\n")
    assert load(path).daemon.drain_timeout == 0.0
    monkeypatch.setenv("PEERPROXYD_DAEMON__DRAIN_TIMEOUT", "2.5")
    assert load(path).daemon.drain_timeout == 2.5


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("drain_timeout = -1", "daemon.drain_timeout: Input should be greater than or equal to 0"),
        ("drain_timeout = 'soon'", "daemon.drain_timeout: Input should be a valid number"),
        ("grace = 3", "unknown key: daemon.grace"),
    ],
)
def test_bad_daemon_table(tmp_path, table, problem):
    path = tmp_path / "c.toml"
    path.write_text(BASE + f"[daemon]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems[0].startswith(problem), info.value.problems
