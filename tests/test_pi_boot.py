"""The Pi image, booted (issue 18): an arm64 Debian root made with debootstrap (run under
qemu-user through binfmt_misc), the pi-gen stage applied to it as pi-gen does
(tests/support/pigen.py), booted with qemu-system-aarch64 on the `virt` machine with
Debian's arm64 kernel. On first boot the image creates its identity and owner links,
peerproxyd@pitest starts under systemd with the hardened unit and registers with a signaling
server on the host, and a GET through `peerproxyd connect` on the host reaches a small web
service inside the guest.

Network: QEMU, the signaling server (with its STUN responder) and the client run in a
network namespace this test makes, with only `lo`: the guest's user networking (slirp)
reaches the host as 10.0.2.2, which is that namespace's 127.0.0.1, and nothing can leave.
The path for WebRTC: the daemon learns its server-reflexive candidate 127.0.0.1:<slirp's
port> from STUN at 10.0.2.2; slirp forwards what arrives at that port to the guest from any
sender (as a full-cone NAT would), so the client's checks reach the daemon, which answers the
peer-reflexive 10.0.2.2:<client port>.

Opt in: PEERPROXYD_TEST_IMAGE=1 (`make test-image`). Needs root, debootstrap,
qemu-user-static with binfmt_misc, qemu-system-arm, e2fsprogs, and the network to Debian's
mirror and PyPI. Every phase has a time limit; its times are printed. The work directory
(debootstrap log, serial console with the guest's journal, process logs) is kept on failure
and named in the failure message; on success it is removed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.netns import Namespace
from tests.support.pigen import (
    ROOT, assemble_stage, chroot, debootstrap, mounted, remove_tree, run, run_stage,
)
from tests.support.procs import TEST_BACKEND, Proc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PEERPROXYD_TEST_IMAGE") != "1",
                       reason="the emulated Pi image takes long: PEERPROXYD_TEST_IMAGE=1 "
                              "(make test-image) runs it"),
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap, chroot and ip netns need root"),
    pytest.mark.timeout(3 * 3600),
]

TOOLS = ("debootstrap", "qemu-system-aarch64", "qemu-aarch64-static", "mkfs.ext4", "ip")
SIGNAL_PORT, STUN_PORT, WEB_PORT, CLIENT_PORT = 8787, 3478, 8080, 9000
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # systemd's colours on the console
HOST = "10.0.2.2"  # the host as the guest sees it under QEMU user networking
# Phase time limits (s), generous: 2 shared cores emulating a third architecture.
LIMITS = {"debootstrap": 2400, "stage2 stand-in": 2400, "stage": 3600, "disk": 600,
          "first boot": 1800, "multi-user": 900, "registered": 900, "connected": 600,
          "GET": 300}

# The stand-in for pi-gen's stage0-2 beyond debootstrap: the kernel, and DHCP on the
# wired interface (Raspberry Pi OS uses NetworkManager; systemd-networkd is smaller).
NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n"
# The device's configuration for this test, and a small web service for it to expose.
CONFIG = f"""[device]
name = "Pi under QEMU"

[signaling]
url = "ws://{HOST}:{SIGNAL_PORT}/ws"
public_url = "http://localhost:{SIGNAL_PORT}"  # share links need a DNS name

[ice]
servers = [{{ urls = "stun:{HOST}:{STUN_PORT}" }}]
mdns = false

[services.web]
upstream = "http://127.0.0.1:{WEB_PORT}"
"""
UNITS = {
    "pitest-web.service": f"""[Unit]
Description=pitest: a small web service for peerproxyd@pitest

[Service]
DynamicUser=yes
ExecStart=/usr/bin/python3 -m http.server {WEB_PORT} --bind 127.0.0.1 --directory /srv/pitest

[Install]
WantedBy=multi-user.target
""",
    # The owner links (root-only in share.txt) to the console, for the test on the host.
    "pitest-share.service": """[Unit]
Description=pitest: the owner links on the console
After=peerproxyd-firstboot.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'sed "s/^/PITEST-SHARE /" /etc/peerproxyd/share.txt > /dev/console'

[Install]
WantedBy=multi-user.target
""",
}


def binfmt_problem() -> str | None:
    """Make sure arm64 binaries run here through qemu-user with the F flag (so they run
    inside a chroot too); why not, if they cannot."""
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)], check=False)
    entry = misc / "qemu-aarch64"
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
    if not entry.exists():
        return f"{entry} missing: install qemu-user-static and binfmt-support"
    text = entry.read_text()
    if not text.startswith("enabled") or not re.search(r"^flags: \w*F", text, re.M):
        return f"{entry} is not enabled with the F flag:\n{text}"
    return None


class Phases:
    """Each phase's time, printed as it ends; a phase past its limit fails the test."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.times[name] = time.monotonic() - started
        print(f"phase {name}: {self.times[name]:.0f} s", flush=True)

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.0f} s" for k, v in self.times.items())


def wait_console(console: Path, qemu: Proc, pattern: str, timeout: float) -> re.Match[str]:
    """The first match of `pattern` in the serial console log, waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        text = console.read_text(errors="replace") if console.exists() else ""
        text = ANSI.sub("", text)
        if match := re.search(pattern, text, re.M):
            return match
        if qemu.popen.poll() is not None:
            raise AssertionError(f"qemu exited ({qemu.popen.returncode}) before {pattern!r}:\n"
                                 f"{qemu.log()[-2000:]}\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} on the console within {timeout:.0f} s:\n"
                                 f"{text[-3000:]}")
        time.sleep(1)


def build_root(rootfs: Path, work: Path, token: str, phases: Phases) -> None:
    """debootstrap, the stage2 stand-in, our stage as pi-gen applies it, this test's device
    configuration and web service; the kernel and initrd copied to `work`."""
    with phases("debootstrap"):
        debootstrap(rootfs, arch="arm64", include="systemd,systemd-sysv,udev",
                    log=work / "debootstrap.log", timeout=LIMITS["debootstrap"])
    with mounted(rootfs):
        with phases("stage2 stand-in"):
            chroot(rootfs, "apt-get update -qq\napt-get install -y -qq --no-install-recommends"
                           " linux-image-arm64", timeout=LIMITS["stage2 stand-in"])
            (rootfs / "etc/systemd/network/20-wired.network").write_text(NETWORK)
            (rootfs / "etc/hostname").write_text("peerproxyd\n")
            chroot(rootfs, "systemctl enable systemd-networkd.service")
        with phases("stage"):
            stage = assemble_stage(work / "stage-peerproxyd")
            (work / "stage.log").write_text(run_stage(stage, rootfs, timeout=LIMITS["stage"]))
        installed = (rootfs / "etc/systemd/system/peerproxyd@.service").read_text()
        assert installed == (ROOT / "systemd/peerproxyd@.service").read_text()
        (rootfs / "etc/peerproxyd/pitest.toml").write_text(CONFIG)
        (rootfs / "srv/pitest").mkdir(parents=True)
        (rootfs / "srv/pitest/index.html").write_text(f"hello from the Pi: {token}\n")
        for name, text in UNITS.items():
            (rootfs / "etc/systemd/system" / name).write_text(text)
        chroot(rootfs, "systemctl enable pitest-web.service pitest-share.service"
                       " peerproxyd@pitest.service")
    (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
    for name in ("vmlinuz", "initrd.img"):
        found = sorted((rootfs / "boot").glob(f"{name}-*"))
        assert len(found) == 1, f"one {name} expected in /boot: {found}"
        shutil.copy(found[0], work / name)


def make_disk(rootfs: Path, disk: Path) -> None:
    """An ext4 image of `rootfs` (mkfs.ext4 -d: no loop device), with 1 GiB to spare."""
    used = int(run(["du", "-sxm", str(rootfs)]).stdout.split()[0])
    run(["truncate", "-s", f"{used + 1024}M", str(disk)])
    run(["mkfs.ext4", "-q", "-F", "-L", "pi-root", "-d", str(rootfs), str(disk)],
        timeout=LIMITS["disk"])


def qemu_args(work: Path) -> list[str]:
    cmdline = ("root=/dev/vda rw console=ttyAMA0 systemd.show_status=1 "
               "systemd.journald.forward_to_console=1")
    return [
        "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
        "-accel", "tcg,thread=multi", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{work / 'console.log'}",
        "-kernel", str(work / "vmlinuz"), "-initrd", str(work / "initrd.img"),
        "-append", cmdline,
        "-drive", f"file={work / 'disk.img'},format=raw,if=none,id=root",
        "-device", "virtio-blk-pci,drive=root",
        "-netdev", "user,id=net", "-device", "virtio-net-pci,netdev=net",
        "-device", "virtio-rng-pci",
    ]


@contextmanager
def namespace(work: Path) -> Iterator[Namespace]:
    """A network namespace with only `lo`: QEMU's slirp, the signaling server and the client
    live there, and nothing they send can leave it. Its processes are ended by the caller."""
    ns = Namespace(f"ppx{secrets.token_hex(3)}-pi")
    run(["ip", "netns", "add", ns.name])
    try:
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


def wait_listening(ns: Namespace, port: int, proto: str, timeout: float = 60) -> None:
    flag = "-ltn" if proto == "tcp" else "-lun"
    deadline = time.monotonic() + timeout
    while not ns.run("ss", "-H", flag, f"sport = :{port}", check=False).strip():
        assert time.monotonic() < deadline, f"nothing listens on {proto} {port} in {ns}"
        time.sleep(0.2)


def boot_and_get(work: Path, token: str, phases: Phases) -> None:
    """Boot the image; the owner link from first boot; a GET through the native client."""
    procs: list[Proc] = []
    with namespace(work) as ns:
        try:
            def start(name: str, args: list[str]) -> Proc:
                procs.append(Proc(name, ns.cmd(*args), work))
                return procs[-1]

            start("signal", [sys.executable, "-m", "peerproxyd", "signal", "--host", "127.0.0.1",
                             "--port", str(SIGNAL_PORT), "--stun-port", str(STUN_PORT)])
            wait_listening(ns, SIGNAL_PORT, "tcp")
            wait_listening(ns, STUN_PORT, "udp")
            console = work / "console.log"
            with phases("first boot"):
                qemu = start("qemu", qemu_args(work))
                wait_console(console, qemu, r"Finished peerproxyd-firstboot\.service",
                             LIMITS["first boot"])
            with phases("multi-user"):
                wait_console(console, qemu, r"Reached target multi-user\.target",
                             LIMITS["multi-user"])
            link = wait_console(console, qemu, r"^PITEST-SHARE\s+web: link: (\S+)", 120)[1]
            device = wait_console(console, qemu, r"^PITEST-SHARE pitest: device (\w+)", 10)[1]
            wait_console(console, qemu, r"Started peerproxyd@pitest\.service", 60)
            with phases("registered"):
                url = re.escape(f"ws://{HOST}:{SIGNAL_PORT}/ws")
                wait_console(console, qemu, rf"registered as {device} \(.*\) at {url}",
                             LIMITS["registered"])
            assert re.search(r"WebRTC backend: native", console.read_text(errors="replace"))
            with phases("connected"):
                client = start("client", [
                    sys.executable, "-m", "peerproxyd", "connect", link,
                    "--signal", f"ws://127.0.0.1:{SIGNAL_PORT}/ws",
                    "--listen", f"127.0.0.1:{CLIENT_PORT}", "--host-address", "127.0.0.1",
                    "--ice-server", f"stun:127.0.0.1:{STUN_PORT}", "--backend", TEST_BACKEND])
                client.wait_for_log("is at http", timeout=LIMITS["connected"])
            with phases("GET"):
                got = ns.run(sys.executable, "-m", "tests.netns", "fetch",
                             f"http://127.0.0.1:{CLIENT_PORT}/", str(LIMITS["GET"]))
            assert f"hello from the Pi: {token}" in got, got
            wait_console(console, qemu, r"peerproxyd\.access: web GET / 200 ", 60)
            # The path slirp allows: the daemon's server-reflexive candidate (slirp's port on
            # the host's 127.0.0.1) with the client's host candidate.
            assert re.search(r"connected via srflx \(udp\) 127\.0\.0\.1:\d+ \[host\] <-> "
                             r"127\.0\.0\.1:\d+ \[srflx\]", client.log()), client.log()
        finally:
            for proc in reversed(procs):
                proc.stop(signal.SIGTERM, timeout=30)


def test_pi_image_boots_registers_and_serves_through_the_native_client():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"missing tools: {missing} (make test-image installs them)"
    problem = binfmt_problem()
    assert problem is None, problem
    work = Path(tempfile.mkdtemp(prefix="peerproxyd-pi-boot-", dir="/var/tmp"))
    phases = Phases()
    token = secrets.token_hex(8)
    try:
        build_root(work / "rootfs", work, token, phases)
        with phases("disk"):
            make_disk(work / "rootfs", work / "disk.img")
        remove_tree(work / "rootfs")
        boot_and_get(work, token, phases)
    except BaseException as exc:
        print(f"phases: {phases.summary()}")
        raise AssertionError(f"{exc}\nlogs kept in {work} (console.log: the guest's console "
                             f"and journal; debootstrap.log, stage.log, *.log)") from exc
    print(f"phases: {phases.summary()}")
    remove_tree(work)
