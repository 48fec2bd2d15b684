"""The command line as a user runs it: exit codes and messages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peerproxyd.trust import identity

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peerproxyd", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_check_config_accepts_the_example_and_id_makes_the_key(tmp_path):
    env = {"STATE_DIRECTORY": str(tmp_path / "state")}
    result = run("check-config", "config/example.toml", env=env)
    assert (result.returncode, result.stdout) == (
        0, f"ok: 2 services (no device key yet in {tmp_path / 'state'}: "
        "the first start creates it)\n")
    assert not (tmp_path / "state").exists()

    result = run("id", "--config", "config/example.toml", env=env)
    assert result.returncode == 0, result.stderr
    ident = identity.load(tmp_path / "state")
    assert result.stdout == (
        f"device id: {ident.device_id}\nfingerprint: sha-256 {ident.fingerprint}\n")
    assert re.fullmatch(r"[a-z2-7]{32}", ident.device_id)
    # Again: the same identity, not a new one.
    assert run("id", "--config", "config/example.toml", env=env).stdout == result.stdout

    result = run("check-config", "config/example.toml", env=env)
    assert (result.returncode, result.stdout) == (
        0, f"ok: 2 services, device id {ident.device_id}\n")


def test_a_corrupt_device_key_stops_check_config_and_serve(tmp_path):
    env = {"STATE_DIRECTORY": str(tmp_path)}
    (tmp_path / "device.key").write_text("not a key\n")
    result = run("check-config", "config/example.toml", env=env)
    assert result.returncode == 1
    assert f"device identity: {tmp_path / 'device.key'} is not a PEM private key" in result.stderr
    result = run("serve", "--config", "config/example.toml", env=env)
    assert result.returncode == 1
    assert f"failed: {tmp_path / 'device.key'} is not a PEM private key" in result.stderr
    assert (tmp_path / "device.key").read_text() == "not a key\n"  # kept for the owner


def test_old_device_keys_are_refused_with_a_pointer(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text(
        '[device]\nid = "camera-pi"\nsecret = "long-enough-secret"\n'
        '[signaling]\nurl = "ws://x/ws"\n[services.camera]\nupstream = "http://x"\n'
    )
    result = run("serve", "--config", str(old))
    assert result.returncode == 2
    assert "config: device.id: no longer supported: the device id is now derived from the " \
        "device key" in result.stderr


def test_check_config_reports_each_problem_and_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[device]\nname = ""\ncolour = "red"\n'
        '[signaling]\nurl = "http://x"\n[services.camera]\nupstream = "ftp://x"\n'
    )
    result = run("check-config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4, result.stderr
    assert any(line.startswith("unknown key: device.colour") for line in lines)
    assert any(line.startswith("device.name: ") for line in lines)
    assert any(line.startswith("signaling.url: ") for line in lines)
    assert any(line.startswith("services.camera.upstream: ") for line in lines)


def test_serve_with_a_bad_file_exits_2_before_starting(tmp_path):
    result = run("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert f"file not found: {tmp_path / 'missing.toml'}" in result.stderr


def test_version():
    result = run("--version")
    assert result.stdout.startswith("peerproxyd ")


def test_share_viewers_revoke(tmp_path):
    env = {"STATE_DIRECTORY": str(tmp_path)}
    result = run("share", "--config", "config/example.toml", "--service", "camera",
                 "--name", "alice", env=env)
    assert result.returncode == 1
    assert f"failed: no device key in {tmp_path}: start the daemon first" in result.stderr
    assert not (tmp_path / "viewers.json").exists()

    ident = identity.load_or_create(tmp_path)
    result = run("share", "--config", "config/example.toml", "--service", "camera",
                 "--name", "alice", "--expires", "12h", env=env)
    assert result.returncode == 0, result.stderr
    *qr, link = result.stdout.splitlines()
    assert len(qr) > 10 and set("".join(qr)) <= set("█▀▄ ")
    assert link.startswith(f"http://{ident.device_id}--camera.localhost:8787/#v=1&")
    assert "viewer alice may use camera until " in result.stderr

    result = run("share", "--config", "config/example.toml", "--service", "nope",
                 "--name", "bob", "--no-qr", env=env)
    assert result.returncode == 1
    assert "failed: no service 'nope' in the configuration (services: camera, ha)" in result.stderr

    result = run("share", "--config", "config/example.toml", "--service", "ha", "--name", "bob",
                 "--no-qr", "--base-url", "https://p.example.net", env=env)
    assert result.stdout.startswith(f"https://{ident.device_id}--ha.p.example.net/#v=1&")

    assert run("revoke", "--config", "config/example.toml", "alice", env=env).returncode == 0
    result = run("viewers", "--config", "config/example.toml", env=env)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SERVICE", "CREATED", "EXPIRES", "STATE"]
    assert lines[1].split()[:2] == ["alice", "camera"] and lines[1].split()[4] == "revoked"
    assert lines[2].split()[:2] == ["bob", "ha"] and lines[2].split()[3:] == ["never", "active"]
    result = run("revoke", "--config", "config/example.toml", "carol", env=env)
    assert (result.returncode, result.stderr.strip()[-30:]) == (1, "failed: no viewer named 'carol'"[-30:])


def test_connect_refuses_a_bad_link():
    result = run("connect", "https://example.net/#v=1")
    assert (result.returncode, result.stderr) == (2, "link: link lacks d, s, n, t, f\n")


BAD_HEAD_SERVER = """
import asyncio, logging, sys
from aiohttp import web
import peerproxyd.cli as cli

cli.setup_logging(sys.argv[1] == "verbose")

async def main():
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    for head in (b"GET / HTTP/1.1\\r\\nBad Header\\r\\n\\r\\n",
                 b"GET / HTTP/1.1\\r\\nX: " + b"a" * 20000 + b"\\r\\n\\r\\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        print((await asyncio.wait_for(reader.readline(), 10)).decode().strip())
        writer.close()
    logging.getLogger("aiohttp.server").error("other errors still show")
    await runner.cleanup()

asyncio.run(main())
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_bad_request_heads_do_not_flood_the_log(verbose: bool) -> None:
    """Each malformed or oversized head gets its 400 and at most one DEBUG line, never an ERROR
    with a traceback: anyone who reaches a listener could otherwise fill the journal."""
    out = subprocess.run(
        [sys.executable, "-c", BAD_HEAD_SERVER, "verbose" if verbose else "quiet"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.splitlines() == ["HTTP/1.0 400 Bad Request"] * 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "other errors still show" in out.stderr
    lines = [line for line in out.stderr.splitlines() if "Error handling request" in line]
    if verbose:
        assert len(lines) == 2 and all("DEBUG aiohttp.server" in line for line in lines)
        assert "400 Invalid header token" in lines[0] and "400 Got more than" in lines[1]
    else:
        assert lines == []
