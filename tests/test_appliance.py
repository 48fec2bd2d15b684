"""The three ways to deploy: systemd units, the container, the Home Assistant add-on; the
example configurations; the shell scripts. (The pi-gen stage: test_pigen.py.)

Needs Debian's systemd (systemd-analyze), shellcheck, tini and apparmor (apparmor_parser);
each test says so and skips without them. The wheel checks at the end ask PyPI and take minutes: PEERPROXYD_SLOW=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import aiohttp
import pytest
import yaml

from peerproxyd.config import load
from peerproxyd.trust import identity
from tests.support.procs import Proc, daemon_config, free_port, new_device, python, wait_http

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ADDON = ROOT / "image" / "ha-addon"
CONVERTER = ADDON / "rootfs/usr/lib/peerproxyd-addon/options_to_toml.py"
ADDON_RUN = ADDON / "rootfs/etc/services.d/peerproxyd/run"
STAGE = ROOT / "image" / "pi-gen" / "stage-peerproxyd"
FIRSTBOOT_UNIT = STAGE / "00-peerproxyd/files/peerproxyd-firstboot.service"
SLOW = os.environ.get("PEERPROXYD_SLOW") == "1"

needs = {
    tool: pytest.mark.skipif(shutil.which(tool) is None, reason=f"needs {tool} (Debian {pkg})")
    for tool, pkg in [("systemd-analyze", "systemd"), ("shellcheck", "shellcheck"),
                      ("tini", "tini"), ("apparmor_parser", "apparmor")]
}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peerproxyd", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, env={**os.environ, **(env or {})})


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd repeats keys, so no dict."""
    section, entries = "", []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        else:
            key, _, value = line.partition("=")
            entries.append((section, key, value))
    return entries


def values(entries: list[tuple[str, str, str]], key: str) -> list[str]:
    return [v for _, k, v in entries if k == key]


# ----- systemd units


@pytest.fixture
def installed_units(tmp_path: Path) -> Path:
    """The units with /opt/peerproxyd (the image's venv) replaced by this venv, as
    systemd-analyze checks that every Exec*= binary exists."""
    for unit in [*(ROOT / "systemd").glob("*.service"), FIRSTBOOT_UNIT]:
        text = unit.read_text().replace("/opt/peerproxyd/bin/", f"{VENV_BIN}/")
        (tmp_path / unit.name).write_text(text)
    return tmp_path


@needs["systemd-analyze"]
@pytest.mark.parametrize(
    "unit", ["peerproxyd@camera.service", "peerproxy-signal.service",
             "peerproxyd-firstboot.service"])
def test_units_pass_systemd_analyze_verify(installed_units: Path, unit: str):
    result = subprocess.run(["systemd-analyze", "verify", str(installed_units / unit)],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


@needs["systemd-analyze"]
@pytest.mark.parametrize("unit", ["peerproxyd@camera.service", "peerproxy-signal.service"])
def test_units_are_hardened(installed_units: Path, unit: str):
    """systemd's own exposure score: 2.0 or less ("OK" starts below 4.0)."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager",
         str(installed_units / unit)], capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert score is not None, result.stdout[-2000:] + result.stderr
    assert result.returncode == 0 and float(score[1]) <= 2.0, score[0]


def test_daemon_unit_integrates_with_the_daemon():
    unit = unit_entries(ROOT / "systemd/peerproxyd@.service")
    single = {k: v for _, k, v in unit if len(values(unit, k)) == 1}
    config = "/etc/peerproxyd/%i.toml"
    assert single["Type"] == "notify" and single["NotifyAccess"] == "main"
    assert single["ExecStart"] == f"/opt/peerproxyd/bin/peerproxyd serve --config {config}"
    assert values(unit, "ExecReload") == [
        f"/opt/peerproxyd/bin/peerproxyd check-config {config}", "/bin/kill -HUP $MAINPID"]
    assert single["ExecStartPre"] == f"/opt/peerproxyd/bin/peerproxyd check-config {config}"
    assert single["WatchdogSec"] == "30s" and single["Restart"] == "on-failure"
    assert single["RestartPreventExitStatus"] == "2"  # check-config's status for a bad file
    # The stop timeout leaves room for the default 10 s drain.
    assert int(single["TimeoutStopSec"].rstrip("s")) > 10
    assert single["DynamicUser"] == "yes" and single["StateDirectory"] == "peerproxyd/%i"
    assert single["EnvironmentFile"] == "-/etc/peerproxyd/%i.env"  # optional overrides
    assert single["CapabilityBoundingSet"] == ""
    assert single["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6 AF_NETLINK"
    for key in ("ProtectSystem", "ProtectHome", "NoNewPrivileges", "PrivateTmp"):
        assert single[key] in ("strict", "yes"), key
    assert "@system-service" in values(unit, "SystemCallFilter")
    assert "peerproxyd-firstboot.service" in single["After"]
    signal_unit = {k: v for _, k, v in unit_entries(ROOT / "systemd/peerproxy-signal.service")}
    assert signal_unit["ExecStart"].endswith("signal --config /etc/peerproxyd/signal.toml")
    assert (signal_unit["KillSignal"], signal_unit["SuccessExitStatus"]) == ("SIGINT", "130")


def test_no_timestamps_under_journald():
    """journald adds its own: the unit's process sees INVOCATION_ID."""
    code = ("import logging, peerproxyd.cli as c; c.setup_logging(False); "
            "logging.getLogger('x').warning('hi')")
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items()
                                if k not in ("INVOCATION_ID", "JOURNAL_STREAM")})
    journald = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "INVOCATION_ID": "0" * 32})
    assert journald.stderr == "WARNING x: hi\n"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d [0-9:,]+ WARNING x: hi\n", plain.stderr)


# ----- example configurations


@pytest.mark.parametrize(("name", "output"), [
    ("camera.toml", "ok: 2 services"),
    ("homeassistant.toml", "ok: 1 services"),
    ("example.toml", "ok: 2 services"),
    ("signal.toml", "ok: signaling server on 0.0.0.0:8787\n"),
])
def test_example_configurations_pass_check_config(name: str, output: str, tmp_path: Path):
    env = {"STATE_DIRECTORY": str(tmp_path / "state")}
    result = cli("check-config", f"config/{name}", env=env)
    if name != "signal.toml":
        output += f" (no device key yet in {tmp_path / 'state'}: the first start creates it)\n"
    assert (result.returncode, result.stdout, result.stderr) == (0, output, "")
    assert not (tmp_path / "state").exists()  # check-config creates nothing


def test_example_services():
    camera = load(ROOT / "config/camera.toml")
    assert {n: s.upstream for n, s in camera.services.items()} == {
        "camera": "http://127.0.0.1:8765", "stream": "http://127.0.0.1:8081"}
    assert camera.daemon.drain_timeout == 10.0
    ha = load(ROOT / "config/homeassistant.toml")
    assert {n: s.upstream for n, s in ha.services.items()} == {"ha": "http://127.0.0.1:8123"}


def test_signal_config_problems_are_reported_like_the_daemons(tmp_path: Path):
    bad = tmp_path / "signal.toml"
    bad.write_text('[server]\nport = 70000\ncolour = "red"\n[limits]\nrate = 0\n')
    result = cli("check-config", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "server.port: Input should be less than or equal to 65535",
        "unknown key: server.colour",
        "limits.rate: Input should be greater than 0",
    ]


def test_signal_server_runs_from_its_file_and_stops_on_sigint(tmp_path: Path):
    """What peerproxy-signal.service relies on: --config, and SIGINT (its KillSignal) closing
    every WebSocket with "going away" before exiting with status 130."""
    port = free_port()
    config = tmp_path / "signal.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n[log]\nlevel = "debug"\n')
    proc = Proc("signal", python("-m", "peerproxyd", "signal", "--config", str(config)), tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")

        async def connect_then_stop() -> int | None:
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
                    hello = await ws.receive_json(timeout=5)
                    assert hello["type"] == "hello"
                    proc.popen.send_signal(signal.SIGINT)
                    msg = await ws.receive(timeout=10)
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                    return ws.close_code

        assert asyncio.run(connect_then_stop()) == 1001
        assert proc.popen.wait(15) == 130
        assert "DEBUG" in proc.log()  # [log] level from the file
    finally:
        proc.stop()


# ----- shell scripts


SHELL_SCRIPTS = [
    "docker/entrypoint.sh",
    "docker/healthcheck.sh",
    "image/ha-addon/prepare.sh",
    "image/ha-addon/rootfs/etc/services.d/peerproxyd/run",
    "image/ha-addon/rootfs/etc/services.d/peerproxyd/finish",
    "image/pi-gen/build.sh",
    "image/pi-gen/stage-peerproxyd/prerun.sh",
    "image/pi-gen/stage-peerproxyd/00-peerproxyd/01-run.sh",
]
SOURCED_SCRIPTS = ["image/pi-gen/config", "image/pi-gen/stage-peerproxyd/EXPORT_IMAGE"]


@needs["shellcheck"]
def test_shell_scripts_pass_shellcheck():
    result = subprocess.run(["shellcheck", *SHELL_SCRIPTS], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout
    result = subprocess.run(["shellcheck", *SOURCED_SCRIPTS], capture_output=True, text=True,
                            cwd=ROOT)  # each says `# shellcheck shell=bash` (pi-gen sources it)
    assert result.returncode == 0, result.stdout


def test_every_shell_script_is_listed_and_executable():
    found = {str(p.relative_to(ROOT)) for d in ("docker", "image") for p in (ROOT / d).rglob("*")
             if p.is_file() and p.read_bytes()[:2] == b"#!" and p.suffix != ".py"}
    assert found == set(SHELL_SCRIPTS)
    for script in SHELL_SCRIPTS:
        assert os.access(ROOT / script, os.X_OK), script


# ----- container


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_init():
    steps = dockerfile_instructions(ROOT / "Dockerfile")
    froms = [args for op, args in steps if op == "FROM"]
    assert froms == ["${BUILD_FROM} AS build", "${BUILD_FROM}"]
    assert ("ARG", "BUILD_FROM=debian:trixie-slim") in steps  # Python 3.13: the native backend
    runtime = steps[[op for op, _ in steps].index("FROM", 3) + 1:]
    assert ("USER", "peerproxyd:peerproxyd") in runtime
    user_at = runtime.index(("USER", "peerproxyd:peerproxyd"))
    assert all(op != "RUN" for op, _ in runtime[user_at:]), "nothing runs as root after USER"
    assert any(op == "HEALTHCHECK" and "docker-healthcheck" in a for op, a in runtime)
    entrypoint = json.loads(dict(runtime)["ENTRYPOINT"])
    assert entrypoint == ["/usr/bin/tini", "-g", "--", "/usr/local/bin/docker-entrypoint"]
    assert ("COPY", "--from=build /opt/peerproxyd /opt/peerproxyd") in runtime
    # armv7 builds what has no wheel there; the runtime gets the library pylibsrtp links.
    build_run = " ".join(a for op, a in steps[: len(steps) - len(runtime)] if op == "RUN")
    for pkg in ("build-essential", "libffi-dev", "libssl-dev", "libsrtp2-dev"):
        assert pkg in build_run
    assert '"$TARGETARCH" = "arm"' in build_run
    assert "libsrtp2-1" in dict(runtime)["RUN"]


def test_dockerfile_copies_only_files_that_exist():
    for file in (ROOT / "Dockerfile", ADDON / "Dockerfile"):
        for op, args in dockerfile_instructions(file):
            if op == "COPY" and not args.startswith("--from"):
                *sources, _ = args.split()
                for source in sources:
                    assert (file.parent / source).exists(), f"{file}: COPY {source}"


def entrypoint(*args: str, env: dict[str, str], tmp_path: Path, name: str = "container",
               init: bool = False) -> Proc:
    """docker/entrypoint.sh as the container runs it: PATH with peerproxyd first, and tini."""
    command = [str(ROOT / "docker/entrypoint.sh"), *args]
    if init:
        command = ["tini", "-g", "--", *command]
    return Proc(name, command, tmp_path, env={"PATH": f"{VENV_BIN}:{os.environ['PATH']}", **env})


def test_entrypoint_without_a_configuration_says_what_to_mount(tmp_path: Path):
    proc = entrypoint(env={"PEERPROXYD_CONFIG": str(tmp_path / "none.toml")}, tmp_path=tmp_path)
    assert proc.popen.wait(30) == 2
    assert f"peerproxyd: no configuration file at {tmp_path / 'none.toml'}" in proc.log()
    assert f'-v "$PWD/camera.toml:{tmp_path / "none.toml"}:ro"' in proc.log()


def test_entrypoint_check_config_and_passthrough(tmp_path: Path):
    device = new_device(tmp_path / "state")
    proc = entrypoint("check-config", env={"PEERPROXYD_CONFIG": str(ROOT / "config/camera.toml"),
                                           "STATE_DIRECTORY": str(tmp_path / "state")},
                      tmp_path=tmp_path, name="check")
    assert proc.popen.wait(30) == 0
    assert proc.log() == f"ok: 2 services, device id {device}\n"
    proc = entrypoint("sh", "-c", "echo passthrough", env={}, tmp_path=tmp_path, name="sh")
    assert proc.popen.wait(30) == 0
    assert proc.log() == "passthrough\n"


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "docker/healthcheck.sh")], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **env})


@needs["tini"]
def test_container_serves_reports_health_and_stops_gracefully_under_tini(tmp_path: Path):
    signal_port = free_port()
    server = Proc("signal", python("-m", "peerproxyd", "signal", "--port", str(signal_port)),
                  tmp_path)
    container = None
    try:
        wait_http(f"http://127.0.0.1:{signal_port}/healthz")
        box = new_device(tmp_path / "state")
        config = daemon_config(tmp_path / "peerproxyd.toml", state_dir=tmp_path / "state",
                               signal_port=signal_port, services={"camera": free_port()})
        health = tmp_path / "peerproxyd.health"
        env = {"PEERPROXYD_CONFIG": str(config), "PEERPROXYD_HEALTH_FILE": str(health)}
        container = entrypoint(env=env, tmp_path=tmp_path, init=True)
        container.wait_for_log(f"registered as {box}")
        # tini's child is the daemon itself: the entry point exec'd it.
        children = Path(f"/proc/{container.pid}/task/{container.pid}/children").read_text().split()
        assert len(children) == 1
        cmdline = Path(f"/proc/{children[0]}/cmdline").read_bytes().split(b"\0")
        assert cmdline[-4:-1] == [b"serve", b"--config", str(config).encode()]

        deadline = time.monotonic() + 10
        while not health.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        check = healthcheck({"PEERPROXYD_HEALTH_FILE": str(health)})
        assert check.returncode == 0, check.stdout
        assert check.stdout.startswith(f"registered as {box} at ws://127.0.0.1:{signal_port}/ws")

        os.utime(health, (time.time() - 60, time.time() - 60))  # as if the daemon hung
        stale = healthcheck({"PEERPROXYD_HEALTH_FILE": str(health),
                             "PEERPROXYD_SIGNAL_PORT": str(free_port())})
        assert stale.returncode == 1 and "stale: last update 6" in stale.stdout

        container.popen.send_signal(signal.SIGTERM)  # docker stop signals PID 1: tini
        assert container.popen.wait(20) == 0
        assert "SIGTERM: stopping" in container.log()
        assert not health.exists()
        gone = healthcheck({"PEERPROXYD_HEALTH_FILE": str(health),
                            "PEERPROXYD_SIGNAL_PORT": str(free_port())})
        assert gone.returncode == 1 and gone.stdout.startswith("not ready")
    finally:
        if container is not None:
            container.stop()
        server.stop()


@needs["tini"]
def test_container_signal_mode_is_healthy_via_healthz(tmp_path: Path):
    port = free_port()
    config = tmp_path / "signal.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
    container = entrypoint("signal", env={"PEERPROXYD_SIGNAL_CONFIG": str(config)},
                           tmp_path=tmp_path, init=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        check = healthcheck({"PEERPROXYD_HEALTH_FILE": str(tmp_path / "none"),
                             "PEERPROXYD_SIGNAL_PORT": str(port)})
        assert check.returncode == 0
        assert json.loads(check.stdout)["status"] == "ok"
        container.popen.send_signal(signal.SIGTERM)
        assert container.popen.wait(15) in (0, 130, -signal.SIGTERM, 143)
    finally:
        container.stop()


# ----- Home Assistant add-on


def addon_config() -> dict:
    return yaml.safe_load((ADDON / "config.yaml").read_text())


def test_addon_follows_current_conventions():
    config = addon_config()
    assert config["arch"] == ["aarch64", "amd64"]  # armv7 is no longer a Home Assistant arch
    assert config["init"] is False and config["host_network"] is True
    assert config["slug"] == "peerproxyd" and re.fullmatch(r"\d+\.\d+\.\d+", config["version"])
    assert config["timeout"] > 10  # room for the drain
    assert config["options"].keys() == config["schema"].keys()
    assert config["schema"]["services"] == [
        {"name": "str", "url": "url", "host": "str?", "forwarded_for": "bool?"}]
    assert config["schema"]["name"] == "str?"
    assert "device_id" not in config["schema"] and "secret" not in config["schema"]
    translations = yaml.safe_load((ADDON / "translations/en.yaml").read_text())
    assert translations["configuration"].keys() == config["schema"].keys()
    assert all(t["name"] and t["description"] for t in translations["configuration"].values())
    assert not (ADDON / "build.yaml").exists() and not (ADDON / "build.json").exists()
    steps = dockerfile_instructions(ADDON / "Dockerfile")
    # glibc (Debian trixie, Python 3.13): the whole lock, libdatachannel-py included
    assert steps[0] == ("ARG", "BUILD_FROM=ghcr.io/home-assistant/base-debian:trixie")
    assert steps[1] == ("FROM", "${BUILD_FROM}")
    assert "pip install --no-cache-dir -r /ctx/dist/requirements.lock" in dict(steps)["RUN"]
    assert '"peerproxyd[native]==${PEERPROXYD_VERSION}"' in dict(steps)["RUN"]
    for name in ("DOCS.md", "CHANGELOG.md", "apparmor.txt"):
        assert (ADDON / name).read_text().strip(), name
    assert f"## {config['version']}" in (ADDON / "CHANGELOG.md").read_text()
    assert "profile peerproxyd " in (ADDON / "apparmor.txt").read_text()
    for name, size in (("icon.png", (128, 128)), ("logo.png", (250, 100))):
        data = (ADDON / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == size


@needs["apparmor_parser"]
def test_addon_apparmor_profile_parses():
    """Parsed (with the base abstractions), not loaded: no AppArmor kernel here."""
    result = subprocess.run(["apparmor_parser", "--skip-kernel-load", "--skip-cache",
                             "--skip-read-cache", str(ADDON / "apparmor.txt")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def convert(options: dict, data: Path) -> subprocess.CompletedProcess[str]:
    (data / "options.json").write_text(json.dumps(options))
    return subprocess.run([sys.executable, str(CONVERTER), str(data / "options.json"),
                           str(data / "peerproxyd.toml")], capture_output=True, text=True,
                          timeout=30)


def test_addon_default_options_become_a_valid_configuration(tmp_path: Path):
    result = convert(addon_config()["options"], tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    settings = load(tmp_path / "peerproxyd.toml")
    # The device key goes in the add-on's /data (here tmp_path), made by the daemon.
    assert settings.device.state_dir == tmp_path
    assert settings.device.name == "Home Assistant"
    assert not identity.identity_exists(tmp_path)
    assert (tmp_path / "peerproxyd.toml").stat().st_mode & 0o777 == 0o600
    assert {n: s.upstream for n, s in settings.services.items()} == {"ha": "http://127.0.0.1:8123"}
    assert settings.limits.max_peers == 16 and settings.log.level == "info"
    assert settings.ice.servers == []
    # The Ingress panel, for Supervisor's proxy only.
    assert (settings.daemon.panel, settings.daemon.panel_allow) == ("0.0.0.0:8099", ["172.30.32.2"])
    addon = addon_config()
    assert (addon["ingress"], addon["ingress_port"]) == (True, 8099)


def test_addon_options_map_key_by_key(tmp_path: Path):
    options = {
        "name": 'quote"and\\backslash', "signaling_url":
        "wss://signal.example.net/ws", "services": [
            {"name": "ha", "url": "http://127.0.0.1:8123"},
            {"name": "printer", "url": "http://192.168.1.40/"},
            {"name": "sync", "url": "http://127.0.0.1:8384", "host": "upstream",
             "forwarded_for": True}],
        "stun_servers": ["stun:stun.example.net:3478"], "max_peers": 4, "log_level": "debug",
    }
    assert convert(options, tmp_path).returncode == 0
    settings = load(tmp_path / "peerproxyd.toml")
    assert settings.device.name == 'quote"and\\backslash'
    assert settings.signaling.url == "wss://signal.example.net/ws"
    assert {n: s.upstream for n, s in settings.services.items()} == {
        "ha": "http://127.0.0.1:8123", "printer": "http://192.168.1.40",
        "sync": "http://127.0.0.1:8384"}
    sync, ha = settings.services["sync"], settings.services["ha"]
    assert (sync.host, sync.forwarded_for, ha.host, ha.forwarded_for) == (
        "upstream", True, "viewer", False)
    assert [s.urls for s in settings.ice.servers] == [["stun:stun.example.net:3478"]]
    assert (settings.limits.max_peers, settings.log.level) == (4, "debug")
    assert convert({**options, "name": ""}, tmp_path).returncode == 0
    assert load(tmp_path / "peerproxyd.toml").device.name is None


@pytest.mark.parametrize(("options", "problem"), [
    ({"services": [{"name": "cam", "url": "ftp://x"}]},
     "config: services.cam.upstream: URL scheme should be 'http' or 'https'"),
    ({"name": "x" * 65}, "config: device.name: must be 1-64 printable characters"),
    ({"signaling_url": "http://x"}, "config: signaling.url: URL scheme should be 'ws' or 'wss'"),
    ({"services": [{"name": "Home Assistant", "url": "http://127.0.0.1:8123"}]},
     "config: services.Home Assistant: service name must be a lowercase DNS label"),
    ({"services": []}, "config: services: at least one [services.<name>] table is required"),
    ({"services": [{"name": "ha", "url": "http://a"}, {"name": "ha", "url": "http://b"}]},
     "services: the name 'ha' is used more than once"),
])
def test_addon_start_script_reports_bad_options_in_the_log(tmp_path: Path, options, problem):
    """The s6 run script, with a stand-in for bashio (the base image's), as Supervisor runs it."""
    merged = {**addon_config()["options"], "signaling_url": "ws://127.0.0.1:9/ws", **options}
    (tmp_path / "options.json").write_text(json.dumps(merged))
    result = run_addon(tmp_path)
    assert result.returncode in (1, 2)
    assert problem in result.stdout, result.stdout


def bashio_stub(data: Path) -> Path:
    """A directory for PATH with a stand-in for bashio (the base image's) and python3."""
    stub = data / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "bashio").write_text(
        "#!/bin/bash\n"
        'bashio::log.info() { echo "[info] $*"; }\n'
        'bashio::log.fatal() { echo "[fatal] $*"; }\n'
        '# shellcheck disable=SC1090\nsource "$1"\n')
    (stub / "bashio").chmod(0o755)
    (stub / "python3").symlink_to(sys.executable)
    return stub


def addon_env(data: Path) -> dict[str, str]:
    return {"PEERPROXYD_ADDON_DATA": str(data), "PEERPROXYD_ADDON_LIB": str(CONVERTER.parent),
            "PATH": f"{bashio_stub(data)}:{VENV_BIN}:{os.environ['PATH']}"}


def run_addon(data: Path) -> subprocess.CompletedProcess[str]:
    """Output is stdout and stderr together, as the add-on log shows them."""
    return subprocess.run([str(data / "bin/bashio"), str(ADDON_RUN)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60,
                          env={**os.environ, **addon_env(data)}, stdin=subprocess.DEVNULL)


def test_addon_start_script_runs_the_daemon(tmp_path: Path):
    signal_port = free_port()
    server = Proc("signal", python("-m", "peerproxyd", "signal", "--port", str(signal_port)),
                  tmp_path)
    addon = None
    try:
        wait_http(f"http://127.0.0.1:{signal_port}/healthz")
        options = {**addon_config()["options"], "name": "Addon Test",
                   "signaling_url": f"ws://127.0.0.1:{signal_port}/ws"}
        (tmp_path / "options.json").write_text(json.dumps(options))
        env = addon_env(tmp_path)
        addon = Proc("addon", [str(tmp_path / "bin/bashio"), str(ADDON_RUN)], tmp_path, env=env)
        match = addon.wait_for_log(r"registered as ([a-z2-7]{32}) \(Addon Test\)")
        # The daemon created the device key in the add-on's data on its first start.
        assert match[1] == identity.load(tmp_path).device_id
        log = addon.log()
        assert f"[info] Writing {tmp_path}/peerproxyd.toml from the add-on options" in log
        assert "[info] Starting peerproxyd" in log
        addon.popen.send_signal(signal.SIGTERM)  # s6 stopping the service: exec'd, so direct
        assert addon.popen.wait(20) == 0
        toml = tomllib.loads((tmp_path / "peerproxyd.toml").read_text())
        assert toml["device"] == {"state_dir": str(tmp_path), "name": "Addon Test"}
    finally:
        if addon is not None:
            addon.stop()
        server.stop()


# ----- wheels for every platform (slow: PyPI)

def _glibc(arch: str, newest: int) -> list[str]:
    return [f"manylinux_2_{v}_{arch}" for v in range(17, newest + 1)] + [f"manylinux2014_{arch}"]


PLATFORMS = {
    # name: (python version, platform_machine, pip --platform tags); every image is Debian
    # trixie: glibc 2.41
    "linux/amd64": ("3.13", "x86_64", _glibc("x86_64", 41)),
    "linux/arm64": ("3.13", "aarch64", _glibc("aarch64", 41)),
    "linux/arm/v7": ("3.13", "armv7l", _glibc("armv7l", 41)),
    "ha-addon aarch64 (trixie)": ("3.13", "aarch64", _glibc("aarch64", 41)),
    "ha-addon amd64 (trixie)": ("3.13", "x86_64", _glibc("x86_64", 41)),
    "pi-gen arm64 (trixie)": ("3.13", "aarch64", _glibc("aarch64", 41)),
    "pi-gen armhf (trixie)": ("3.13", "armv7l", _glibc("armv7l", 41)),
}
PURE_SDIST = {"sdnotify"}  # no wheel on PyPI at all; pure Python, builds anywhere
NO_WHEEL = {  # what the Dockerfile's build stage has to compile (docs/deploy.md)
    "linux/arm/v7": {"cffi", "google-crc32c", "pylibsrtp", "uvloop"},
    "pi-gen armhf (trixie)": {"cffi", "google-crc32c", "pylibsrtp", "uvloop"},  # 00-packages
}


def pins(python_version: str, machine: str) -> dict[str, str]:
    """requirements.lock's pins (name -> version) whose markers hold on that platform."""
    from packaging.requirements import Requirement

    out = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line)
        env = {"python_version": python_version, "platform_machine": machine,
               "sys_platform": "linux", "platform_system": "Linux"}
        if requirement.marker is None or requirement.marker.evaluate(env):
            out[requirement.name.lower()] = str(requirement.specifier).removeprefix("==")
    return out


def test_the_native_backend_is_locked_where_it_has_wheels():
    assert "libdatachannel-py" in pins("3.13", "x86_64") and "libdatachannel-py" in pins(
        "3.12", "aarch64")
    for python_version, machine in (("3.11", "x86_64"), ("3.13", "armv7l")):
        assert "libdatachannel-py" not in pins(python_version, machine)
        assert "aiortc" in pins(python_version, machine)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="asks PyPI for every pinned package: PEERPROXYD_SLOW=1")
@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_dependency_has_a_wheel_or_is_known_to_build(platform: str, tmp_path: Path):
    version, machine, tags = PLATFORMS[platform]
    missing = set()
    for name, pin in pins(version, machine).items():
        requirement = f"{name}=={pin}"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--python-version", version,
             *(arg for tag in tags for arg in ("--platform", tag)),
             "--dest", str(tmp_path), requirement], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            missing.add(requirement.split("==")[0].lower())
    assert missing - PURE_SDIST == NO_WHEEL.get(platform, set())


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="compiles four packages: PEERPROXYD_SLOW=1")
def test_what_armv7_lacks_builds_from_source_with_the_dockerfiles_packages(tmp_path: Path):
    """The same sdists, built here (amd64) with the -dev packages the Dockerfile's build
    stage installs for arm/v7 (build-essential pkg-config libffi-dev libssl-dev
    libsrtp2-dev): what the build needs does not depend on the architecture."""
    pinned = pins("3.13", "armv7l")
    names = sorted(NO_WHEEL["linux/arm/v7"])
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-binary=:all:",
         "--wheel-dir", str(tmp_path), *(f"{n}=={pinned[n]}" for n in names)],
        capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    built = sorted(p.name.split("-")[0].replace("_", "-") for p in tmp_path.glob("*.whl"))
    assert built == names
