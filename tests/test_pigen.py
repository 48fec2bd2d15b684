"""The pi-gen stage, run for real: a Debian root of the config's RELEASE (trixie, Python
3.13) made with debootstrap stands in
for pi-gen's stage2, and the stage's steps run the way pi-gen runs them (the packages of
00-packages installed in the chroot, 01-run.sh on the host with ROOTFS_DIR and on_chroot).
Then the installed daemon is started inside the chroot and registers with a signaling
server on 127.0.0.1.

Needs root, debootstrap and the network to Debian's mirror and PyPI; about 3-4 minutes
(debootstrap about 1, packages about 1.5, pip about 1). The architecture is the build
host's (amd64 here), not a Pi's: the stage's scripts are the same, the wheels are not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Proc, free_port, python, wait_http

ROOT = Path(__file__).resolve().parents[1]
PIGEN = ROOT / "image" / "pi-gen"
MIRROR = os.environ.get("PEERPROXYD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
RELEASE = re.search(r"^RELEASE=(\w+)", (PIGEN / "config").read_text(), re.M)[1]  # type: ignore[index]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and chroot need root"),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="needs Debian's debootstrap"),
    pytest.mark.timeout(900),
]

# pi-gen's on_chroot runs `chroot ROOTFS_DIR /bin/bash` with what it reads on stdin; ours
# clears the host's environment, but keeps its CA bundle for pip (a proxy's CA, if any).
ON_CHROOT = r"""
on_chroot() {
    chroot "$ROOTFS_DIR" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_CERT=/etc/ssl/certs/build-host-ca.crt /bin/bash -e "$@"
}
export -f on_chroot
"""


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)  # type: ignore
    assert result.returncode == 0, \
        f"{args}: {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def chroot(rootfs: Path, script: str) -> subprocess.CompletedProcess[str]:
    return run(["bash", "-c", ON_CHROOT + 'on_chroot <<"SCRIPT"\n' + script + "\nSCRIPT\n"],
               env={**os.environ, "ROOTFS_DIR": str(rootfs)})


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """stage2 stand-in: Debian RELEASE with systemd, /proc /sys /dev mounted as pi-gen does."""
    rootfs = tmp_path_factory.mktemp("pigen") / "rootfs"
    started = time.monotonic()
    run(["debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv",
         RELEASE, str(rootfs), MIRROR], timeout=900)
    print(f"debootstrap: {time.monotonic() - started:.0f} s")
    mounts = [("proc", ["-t", "proc", "proc"]), ("sys", ["-t", "sysfs", "sys"]),
              ("dev", ["--bind", "/dev"])]
    mounted: list[Path] = []
    try:
        for name, how in mounts:
            run(["mount", *how, str(rootfs / name)])
            mounted.append(rootfs / name)
        shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        bundle = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
        (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copy(bundle, rootfs / "etc/ssl/certs/build-host-ca.crt")
        yield rootfs
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(rootfs.parent, ignore_errors=True)


def test_stage_installs_peerproxyd_and_first_boot_gives_it_an_identity(rootfs, tmp_path):
    # build.sh --stage-only assembles what pi-gen would read: our stage plus the wheel,
    # requirements.lock, units and example configurations in files/.
    stage = tmp_path / "stage-peerproxyd"
    run(["bash", str(PIGEN / "build.sh"), "--stage-only", str(stage)],
        env={**os.environ, "PYTHON": sys.executable})
    substage = stage / "00-peerproxyd"
    assert sorted(p.name for p in (substage / "files" / "dist").iterdir()) == [
        "peerproxyd-0.1.0-py3-none-any.whl", "requirements.lock"]

    timings = {}
    started = time.monotonic()
    packages = " ".join((substage / "00-packages").read_text().split())
    chroot(rootfs, "export DEBIAN_FRONTEND=noninteractive\napt-get update -qq\n"
                   f"apt-get install -y -qq --no-install-recommends {packages}")
    timings["00-packages"] = time.monotonic() - started

    started = time.monotonic()
    env = {**os.environ, "ROOTFS_DIR": str(rootfs)}
    run(["bash", "-c", ON_CHROOT + "./prerun.sh"], cwd=stage, env=env)  # ROOTFS_DIR exists: no-op
    run(["bash", "-c", ON_CHROOT + "./01-run.sh"], cwd=substage, env=env, timeout=900)
    timings["01-run.sh"] = time.monotonic() - started
    print("timings:", {k: f"{v:.0f} s" for k, v in timings.items()})

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
