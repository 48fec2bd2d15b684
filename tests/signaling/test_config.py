"""The signaling server's `[ice]` and `[redis]` tables and `peerproxyd signal --redis`."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from peerproxyd.errors import ConfigError
from peerproxyd.signaling import config
from tests.signaling.test_redis import RedisServer
from tests.support.procs import Proc, free_port, python

TURN_SECRET = "a-turn-secret-of-some-length"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "signal.toml"
    path.write_text("[server]\nport = 0\n" + text)
    return path


def test_ice_and_redis_tables_become_run_signaling_arguments(tmp_path: Path) -> None:
    (tmp_path / "turn-secret").write_text(TURN_SECRET + "\n")
    settings = config.load(write(tmp_path, (
        '[ice]\nurls = ["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp"]\n'
        'turn_secret_file = "turn-secret"\nturn_ttl = 600\n'
        '[redis]\nurl = "redis://127.0.0.1:6390/2"\npresence_ttl = 4.0\n'
        'trusted_proxies = ["10.0.0.0/8"]\n'
    )))
    kwargs = settings.app_kwargs()
    assert kwargs["ice_urls"] == ("stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp")
    assert (kwargs["turn_secret"], kwargs["turn_ttl"]) == (TURN_SECRET, 600)
    assert kwargs["redis_url"] == "redis://127.0.0.1:6390/2"
    options = kwargs["redis_options"]
    assert (options.presence_ttl, options.trusted_proxies) == (4.0, ("10.0.0.0/8",))


def test_defaults_keep_one_instance_in_memory(tmp_path: Path) -> None:
    kwargs = config.load(write(tmp_path, "")).app_kwargs()
    assert not {"redis_url", "ice_urls", "turn_secret"} & kwargs.keys()


@pytest.mark.parametrize(("text", "problem"), [
    ('[redis]\nurl = "http://127.0.0.1:6379"\n', "redis.url: must be a redis://"),
    ('[ice]\nurls = ["http://x"]\n', "ice.urls: not a stun:, turn: or turns: URL"),
    ('[ice]\nurls = ["turn:x:3478"]\nturn_secret = "short"\n', "ice.turn_secret: String should"),
    ('[ice]\nurls = ["stun:x:3478"]\nturn_secret = "' + TURN_SECRET + '"\n',
     "ice.turn_secret: set, but ice.urls lists no turn: server"),
    ('[ice]\nurls = ["turn:x"]\nturn_secret_file = "missing"\n',
     "ice.turn_secret_file: cannot read"),
])
def test_bad_tables_are_clear_errors(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(write(tmp_path, text))
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems


def healthz(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return json.loads(response.read())


def test_signal_command_shares_state_through_redis(tmp_path: Path) -> None:
    """Two `peerproxyd signal` processes, one given `--redis`, one `[redis] url`: both report
    the engine up on /healthz; a third without either keeps state in memory."""
    redis = RedisServer(tmp_path)
    redis.start()
    config = write(tmp_path, f'[redis]\nurl = "{redis.url}"\n')
    ports = [free_port() for _ in range(3)]
    commands = [
        ["--redis", redis.url, "--port", str(ports[0])],
        ["--config", str(config), "--port", str(ports[1])],
        ["--port", str(ports[2])],
    ]
    procs = [Proc(f"signal-{i}", python("-m", "peerproxyd", "signal", "--stun-port", "0", *c),
                  tmp_path) for i, c in enumerate(commands)]
    try:
        for proc in procs:
            proc.wait_for_log("signaling server listening", timeout=15)
        assert [healthz(port).get("redis") for port in ports] == ["up", "up", None]
    finally:
        for proc in procs:
            proc.stop()
        redis.stop()
