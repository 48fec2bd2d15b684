"""The command line as a user runs it: exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peerproxyd", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_check_config_accepts_the_example():
    result = run("check-config", "config/example.toml")
    assert (result.returncode, result.stdout) == (0, "ok: 2 services\n")


def test_check_config_reports_each_problem_and_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[device]\nid = "Bad_Id"\nsecret = "long-enough-secret"\ncolour = "red"\n'
        '[signaling]\nurl = "http://x"\n[services.camera]\nupstream = "ftp://x"\n'
    )
    result = run("check-config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4, result.stderr
    assert any(line.startswith("unknown key: device.colour") for line in lines)
    assert any(line.startswith("device.id: ") for line in lines)
    assert any(line.startswith("signaling.url: ") for line in lines)
    assert any(line.startswith("services.camera.upstream: ") for line in lines)


def test_serve_with_a_bad_file_exits_2_before_starting(tmp_path):
    result = run("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert f"file not found: {tmp_path / 'missing.toml'}" in result.stderr


def test_version():
    result = run("--version")
    assert result.stdout.startswith("peerproxyd ")
