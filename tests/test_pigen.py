"""The pi-gen stage, run for real: a Debian root of the config's RELEASE (trixie, Python
3.13) made with debootstrap stands in
for pi-gen's stage2, and the stage's steps run the way pi-gen runs them (tests/support/pigen.py:
00-packages installed in the chroot, 01-run.sh on the host with ROOTFS_DIR and on_chroot).
Then the installed daemon is started inside the chroot and registers with a signaling
server on 127.0.0.1.

Needs root, debootstrap and the network to Debian's mirror and PyPI; about 3-4 minutes
(debootstrap about 1, packages about 1.5, pip about 1). The architecture is the build
host's (amd64 here), not a Pi's: the stage's scripts are the same, the wheels are not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pigen import (
    PIGEN, ROOT, assemble_stage, chroot, debootstrap, mounted, remove_tree, run_stage,
)
from tests.support.procs import Proc, free_port, python, wait_http

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and chroot need root"),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="needs Debian's debootstrap"),
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """stage2 stand-in: Debian RELEASE with systemd, /proc /sys /dev mounted as pi-gen does."""
    rootfs = tmp_path_factory.mktemp("pigen") / "rootfs"
    started = time.monotonic()
    debootstrap(rootfs, timeout=900)
    print(f"debootstrap: {time.monotonic() - started:.0f} s")
    try:
        with mounted(rootfs):
            yield rootfs
    finally:
        remove_tree(rootfs.parent)


def test_stage_installs_peerproxyd_and_first_boot_gives_it_an_identity(rootfs, tmp_path):
    # build.sh --stage-only assembles what pi-gen would read: our stage plus the wheel,
    # requirements.lock, units and example configurations in files/.
    stage = assemble_stage(tmp_path / "stage-peerproxyd")
    substage = stage / "00-peerproxyd"
    assert sorted(p.name for p in (substage / "files" / "dist").iterdir()) == [
        "peerproxyd-0.1.0-py3-none-any.whl", "requirements.lock"]

    started = time.monotonic()
    run_stage(stage, rootfs, timeout=900)  # 00-packages, then 01-run.sh, as pi-gen does
    print(f"stage: {time.monotonic() - started:.0f} s")

    # What 01-run.sh installed.
    version = chroot(rootfs, "/opt/peerproxyd/bin/peerproxyd --version").stdout
    assert version.strip() == "peerproxyd 0.1.0"
    wants = rootfs / "etc/systemd/system/multi-user.target.wants/peerproxyd-firstboot.service"
    assert wants.is_symlink()
    assert os.readlink(wants) == "/etc/systemd/system/peerproxyd-firstboot.service"
    for name in ("camera.toml", "homeassistant.toml", "signal.toml"):
        assert (rootfs / "etc/peerproxyd" / name).stat().st_mode & 0o777 == 0o644
    assert "net.core.rmem_max = 4194304" in (rootfs / "etc/sysctl.d/60-peerproxyd.conf").read_text()
    assert not (rootfs / "tmp/peerproxyd").exists()
    verify = chroot(rootfs, "systemd-analyze verify /etc/systemd/system/peerproxyd@camera.service"
                            " /etc/systemd/system/peerproxy-signal.service"
                            " /etc/systemd/system/peerproxyd-firstboot.service")
    assert verify.stderr == ""
    chroot(rootfs, "systemctl enable peerproxyd@camera.service")
    wants = rootfs / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "peerproxyd@camera.service").is_symlink()

    # First boot: a device key per configuration, in its state directory, and the share
    # details.
    first = chroot(rootfs, "/opt/peerproxyd/bin/python /usr/local/lib/peerproxyd/firstboot.py")
    etc = rootfs / "etc/peerproxyd"
    state = rootfs / "var/lib/private/peerproxyd"
    devices = dict(line.split("=", 1) for line in (etc / "identity").read_text().splitlines())
    assert devices.keys() == {"camera", "homeassistant"}
    device = devices["camera"]
    assert len(device) == 32 and device != devices["homeassistant"]
    for name in ("share.txt", "identity"):
        assert (etc / name).stat().st_mode & 0o777 == 0o600, name
    assert (state / "camera/device.key").stat().st_mode & 0o777 == 0o600
    assert (state.parent.stat().st_mode & 0o777, (state / "camera").stat().st_mode & 0o777) \
        == (0o700, 0o700)
    assert not (state / "signal").exists()
    assert ("camera: sudo STATE_DIRECTORY=/var/lib/private/peerproxyd/camera peerproxyd share "
            "--config /etc/peerproxyd/camera.toml --service camera --name NAME") in first.stdout
    shared = (etc / "share.txt").read_text()
    assert "  camera: link: http://" in shared and "link: http" not in first.stdout
    assert "camera: owner link in /etc/peerproxyd/share.txt (root only)" in first.stdout
    key = (state / "camera/device.key").read_bytes()
    again = chroot(rootfs, "/opt/peerproxyd/bin/python /usr/local/lib/peerproxyd/firstboot.py")
    assert "first boot is done" in again.stdout
    assert (state / "camera/device.key").read_bytes() == key

    # The installed daemon, with that key (STATE_DIRECTORY as systemd sets it), registers
    # with a signaling server on 127.0.0.1, the chroot sharing the host's network.
    port = free_port()
    signal = Proc("signal", python("-m", "peerproxyd", "signal", "--port", str(port)), tmp_path)
    daemon = None
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        daemon = Proc("daemon", [
            "chroot", str(rootfs), "/usr/bin/env", "-i", "PATH=/usr/bin:/bin",
            "STATE_DIRECTORY=/var/lib/private/peerproxyd/camera",
            f"PEERPROXYD_SIGNALING__URL=ws://127.0.0.1:{port}/ws",
            "PEERPROXYD_ICE__HOST_ADDRESSES=[\"127.0.0.1\"]",
            "/opt/peerproxyd/bin/peerproxyd", "serve", "--config", "/etc/peerproxyd/camera.toml",
        ], tmp_path)
        daemon.wait_for_log(f"registered as {device}", timeout=30)
        # trixie's Python 3.13 on a 64-bit host: requirements.lock brought the native backend
        assert "WebRTC backend: native (auto: libdatachannel-py importable)" in daemon.log()
        daemon.stop()
        assert daemon.popen.returncode == 0
    finally:
        if daemon is not None:
            daemon.stop()
        signal.stop()


def test_first_boot_stores_owner_links_that_open_the_services(tmp_path: Path):
    """The first-boot script outside the image (no chroot): a device key per configuration,
    an owner viewer per service whose link is in share.txt only, and nothing on a rerun."""
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    shutil.copy(ROOT / "config/camera.toml", etc / "camera.toml")
    shutil.copy(ROOT / "config/signal.toml", etc / "signal.toml")
    env = {**os.environ, "PEERPROXYD_ETC": str(etc), "PEERPROXYD_STATE_ROOT": str(state)}
    script = PIGEN / "stage-peerproxyd/00-peerproxyd/files/peerproxyd-firstboot.py"
    first = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    from peerproxyd.trust.identity import load_or_create
    from peerproxyd.trust.viewer_auth import parse_link
    from peerproxyd.trust.viewers import ViewerStore

    identity = load_or_create(state / "camera")
    links = [line.split("link: ", 1)[1] for line in (etc / "share.txt").read_text().splitlines()
             if "link: " in line]
    assert len(links) == 2  # camera.toml has two services
    store = ViewerStore(state / "camera")
    store.load()
    for link in links:
        share = parse_link(link)
        assert (share.device, share.fingerprint) == (identity.device_id, identity.fingerprint_bytes)
        record = store.get(share.name)
        assert record is not None and record.service == share.service and record.expires is None
    assert "link: http" not in first.stdout and "owner link in" in first.stdout
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert "first boot is done" in again.stdout


def test_first_boot_tells_why_a_service_has_no_owner_link(tmp_path: Path):
    """A signaling URL with an IP address gives no share link (browsers need a DNS name):
    the console says so instead of pointing at a link that is not there (the emulated Pi
    found it, tests/test_pi_boot.py)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    config = (ROOT / "config/camera.toml").read_text()
    (etc / "lan.toml").write_text(config.replace("signal.example.net", "192.0.2.7"))
    env = {**os.environ, "PEERPROXYD_ETC": str(etc), "PEERPROXYD_STATE_ROOT": str(tmp_path / "s")}
    script = PIGEN / "stage-peerproxyd/00-peerproxyd/files/peerproxyd-firstboot.py"
    first = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "  camera: no owner link: base URL host must be a DNS name" in first.stdout
    assert "owner link in" not in first.stdout
