"""pi-gen's way of building a root, for tests: a Debian root made with debootstrap stands in
for pi-gen's stage2, and `run_stage` applies a stage to it the way pi-gen's build.sh does
(run_stage and run_sub_stage: prerun.sh, then per sub-stage NN-debconf, NN-packages-nr,
NN-packages, NN-run.sh on the host with ROOTFS_DIR and on_chroot, NN-run-chroot.sh).

Used by tests/test_pigen.py (an amd64 root) and tests/test_pi_boot.py (an arm64 root, run
under qemu-user through binfmt_misc, then booted with qemu-system-aarch64).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIGEN = ROOT / "image" / "pi-gen"
MIRROR = os.environ.get("PEERPROXYD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
RELEASE = re.search(r"^RELEASE=(\w+)", (PIGEN / "config").read_text(), re.M)[1]  # type: ignore


# pi-gen's on_chroot runs `chroot ROOTFS_DIR /bin/bash` with what it reads on stdin; ours
# clears the host's environment, but keeps its CA bundle for pip (a proxy's CA, if any).
ON_CHROOT = r"""
on_chroot() {
    chroot "$ROOTFS_DIR" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_CERT=/etc/ssl/certs/build-host-ca.crt DEBIAN_FRONTEND=noninteractive \
        /bin/bash -e "$@"
}
export -f on_chroot
"""

# pi-gen's run_sub_stage for one sub-stage directory (the current one), step by step as in
# its build.sh (its remove-comments.sed: comments dropped, lines joined); quilt patches
# (NN-patches) are not supported here and fail the stage.
RUN_SUB_STAGE = r"""
for i in {00..99}; do
    if [ -f "${i}-debconf" ]; then
        on_chroot <<EOF
debconf-set-selections <<SELEOF
$(cat "${i}-debconf")
SELEOF
EOF
    fi
    if [ -f "${i}-packages-nr" ]; then
        PACKAGES="$(sed -e 's/#.*//' < "${i}-packages-nr" | tr -s '\n' ' ')"
        if [ -n "${PACKAGES// /}" ]; then
            on_chroot <<EOF
apt-get -o APT::Acquire::Retries=3 install --no-install-recommends -y $PACKAGES
EOF
        fi
    fi
    if [ -f "${i}-packages" ]; then
        PACKAGES="$(sed -e 's/#.*//' < "${i}-packages" | tr -s '\n' ' ')"
        if [ -n "${PACKAGES// /}" ]; then
            on_chroot <<EOF
apt-get -o APT::Acquire::Retries=3 install -y $PACKAGES
EOF
        fi
    fi
    if [ -d "${i}-patches" ]; then
        echo "${i}-patches: quilt patches are not supported by this runner" >&2
        exit 1
    fi
    if [ -x "${i}-run.sh" ]; then
        "./${i}-run.sh"
    fi
    if [ -f "${i}-run-chroot.sh" ]; then
        on_chroot < "${i}-run-chroot.sh"
    fi
done
"""


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `args`; fail with their output's tail unless they exit 0."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)  # type: ignore
    assert result.returncode == 0, \
        f"{args}: {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def chroot(rootfs: Path, script: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`script` run by on_chroot in `rootfs` (bash -e)."""
    return run(["bash", "-c", ON_CHROOT + 'on_chroot <<"SCRIPT"\n' + script + "\nSCRIPT\n"],
               env={**os.environ, "ROOTFS_DIR": str(rootfs)}, timeout=timeout)


def debootstrap(rootfs: Path, *, arch: str | None = None, include: str = "systemd,systemd-sysv",
                log: Path | None = None, timeout: float = 1800) -> None:
    """A minbase Debian RELEASE with `include`, for `arch` (default: the host's). Its output
    goes to `log` if given (kept by the caller on failure)."""
    args = ["debootstrap", "--variant=minbase", f"--include={include}"]
    if arch:
        args.append(f"--arch={arch}")
    args += [RELEASE, str(rootfs), MIRROR]
    if log is None:
        run(args, timeout=timeout)
        return
    with open(log, "w") as out:
        code = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode
    assert code == 0, f"debootstrap failed ({code}): see {log}\n{log.read_text()[-2000:]}"


@contextmanager
def mounted(rootfs: Path) -> Iterator[Path]:
    """/proc, /sys and /dev mounted in `rootfs` as pi-gen's on_chroot does, the host's
    resolv.conf and CA bundle (for apt and pip) in it; all undone on exit."""
    mounts = [("proc", ["-t", "proc", "proc"]), ("sys", ["-t", "sysfs", "sys"]),
              ("dev", ["--bind", "/dev"]), ("dev/pts", ["--bind", "/dev/pts"])]
    done: list[Path] = []
    ca = rootfs / "etc/ssl/certs/build-host-ca.crt"
    try:
        for name, how in mounts:
            run(["mount", *how, str(rootfs / name)])
            done.append(rootfs / name)
        shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        ca.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt", ca)
        yield rootfs
    finally:
        for path in reversed(done):
            subprocess.run(["umount", "-l", str(path)], check=False)
        ca.unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """rm -rf `path`, a directory holding a root, unless something is still mounted below it
    (a bind mount of /dev would take the host's device nodes with it)."""
    below = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    still = [m for m in mounts if m.startswith(below)]
    assert not still, f"not removing {path}: still mounted there: {still}"
    shutil.rmtree(path, ignore_errors=True)


def assemble_stage(dest: Path) -> Path:
    """Our stage as pi-gen reads it (build.sh --stage-only): the stage plus the wheel,
    requirements.lock, units and example configurations in files/."""
    run(["bash", str(PIGEN / "build.sh"), "--stage-only", str(dest)],
        env={**os.environ, "PYTHON": sys.executable})
    return dest


def run_stage(stage: Path, rootfs: Path, *, timeout: float = 1800) -> str:
    """Apply `stage` to `rootfs` (which exists, so prerun.sh's copy_previous is skipped) as
    pi-gen's run_stage does; its output."""
    env = {**os.environ, "ROOTFS_DIR": str(rootfs)}
    out = run(["bash", "-c", ON_CHROOT + "./prerun.sh"], cwd=stage, env=env).stdout
    chroot(rootfs, "apt-get update -qq")  # pi-gen's stage0 did, long before this stage
    for sub in sorted(p for p in stage.iterdir() if p.is_dir() and not (p / "SKIP").exists()):
        out += run(["bash", "-ec", ON_CHROOT + RUN_SUB_STAGE], cwd=sub, env=env,
                   timeout=timeout).stdout
    return out
