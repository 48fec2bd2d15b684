"""The container images built and run for real (issue 18): the Dockerfile and the Home
Assistant add-on's, each FROM a Debian trixie base the test makes (debootstrap, imported as
an image: no registry is reachable here), built with buildah (vfs storage, chroot isolation)
and run with podman (runc: crun refuses this host's hybrid cgroups) on the host's network,
against a signaling server and an aiohttp upstream the test starts on 127.0.0.1: the
container runs as its non-root user, its health check passes, its daemon registers (native
backend), a GET through `peerproxyd connect` reaches the upstream, and a stop (SIGTERM) lets
an in-flight request finish before the container exits 0.

Needs root, debootstrap, buildah, podman and runc (`make test-containers` installs them) and
the network to Debian's mirror and PyPI; 7-9 minutes (docs/deploy.md). Everything
(image store included) lives under the test's tmp dir and is removed at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.procs import Proc, daemon_config, free_port, python
from tests.support.stack import Stack
from tests.test_appliance import bashio_stub

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "image" / "ha-addon"
MIRROR = os.environ.get("PEERPROXYD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
RELEASE = "trixie"
BASE = f"localhost/peerproxyd-test-base:{RELEASE}"
USER_ID = 10001  # the images' user peerproxyd

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and the image store need root"),
    *(pytest.mark.skipif(shutil.which(tool) is None, reason=f"needs Debian's {tool}")
      for tool in ("debootstrap", "buildah", "podman", "runc")),
    pytest.mark.timeout(1800),
]


def run(args: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, \
        f"{args}: {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


class Engine:
    """buildah and podman on a private vfs image store under `store`; `runroot`, their
    run-time state, must be a short path (podman: at most 50 characters)."""

    def __init__(self, store: Path, runroot: Path) -> None:
        self.storage = ["--root", str(store / "root"), "--runroot", str(runroot),
                        "--storage-driver", "vfs"]
        self.env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "TMPDIR": str(store / "tmp")}
        (store / "tmp").mkdir(parents=True, exist_ok=True)

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(self.podman_args(*args), timeout=timeout, env=self.env)

    def podman_args(self, *args: str) -> list[str]:
        # runc with cgroupfs: crun stops at "cgroups in hybrid mode not supported".
        return ["podman", *self.storage, "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", *args]

    def build(self, context: Path, tag: str, log: Path) -> float:
        """`buildah build` of context/Dockerfile FROM the base; seconds taken. Docker format
        keeps HEALTHCHECK (OCI has none); buildah 1.28 leaves TARGETARCH unset."""
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "arm")
        started = time.monotonic()
        with open(log, "w") as out:
            result = subprocess.run(
                ["buildah", *self.storage, "build", "--network", "host", "--format", "docker",
                 "--build-arg", f"BUILD_FROM={BASE}", "--build-arg", f"TARGETARCH={arch}",
                 "--tag", tag, str(context)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, timeout=1200)
        assert result.returncode == 0, log.read_text()[-5000:]
        return time.monotonic() - started


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The store, with the base image: a debootstrap root of trixie imported as BASE. It
    carries the host's CA bundle for pip (a proxy's CA, if any), as test_pigen does."""
    work = tmp_path_factory.mktemp("containers")
    runroot = Path(tempfile.mkdtemp(prefix="peerproxyd-run-"))
    engine = Engine(work / "store", runroot)
    try:
        rootfs = work / "rootfs"
        started = time.monotonic()
        run(["debootstrap", "--variant=minbase", RELEASE, str(rootfs), MIRROR], timeout=900)
        bundle = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
        shutil.copy(bundle, rootfs / "etc/build-host-ca.crt")
        (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/build-host-ca.crt\n")
        run(["tar", "-C", str(rootfs), "-cf", str(work / "base.tar"), "."])
        shutil.rmtree(rootfs)
        engine.podman("import", str(work / "base.tar"), BASE, timeout=600)
        (work / "base.tar").unlink()
        print(f"base image (debootstrap + import): {time.monotonic() - started:.0f} s")
        yield engine
    finally:
        subprocess.run(engine.podman_args("rm", "--all", "--force"), capture_output=True,
                       env=engine.env, timeout=120)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


def limits() -> list[str]:
    """Explicit limits for `podman run`: its defaults exceed this host's, which runc may not
    raise ("error setting rlimit type 7: operation not permitted")."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", "nproc=4096:4096"]


class Container:
    """`podman run IMAGE` in the foreground (its output in NAME.log, exit status its own),
    on the host's network, as the image's user unless `args` say otherwise."""

    def __init__(self, engine: Engine, name: str, image: str, args: list[str],
                 log_dir: Path, command: tuple[str, ...] = ()) -> None:
        self.engine, self.name = engine, name
        self.proc = Proc(name, engine.podman_args(
            "run", "--name", name, "--network", "host", *limits(), "--health-interval",
            "disable", *args, image, *command), log_dir, env=engine.env)

    def pids(self) -> list[int]:
        """Host PIDs of the container's processes (no PID namespace mapping needed: the
        container's PID namespace is a child of the host's)."""
        top = self.engine.podman("top", self.name, "hpid").stdout.split()[1:]
        return [int(pid) for pid in top]

    def uids(self) -> set[int]:
        """Real and effective uids of every process in the container, seen from the host."""
        out = set()
        for pid in self.pids():
            status = Path(f"/proc/{pid}/status").read_text()
            out.update(int(u) for u in re.search(r"^Uid:\s+(.*)$", status, re.M)[1].split()[:2])
        return out

    def stop(self, timeout: int = 30) -> subprocess.Popen[bytes]:
        """`podman stop`: SIGTERM to the container's PID 1, SIGKILL after `timeout` s."""
        return subprocess.Popen(self.engine.podman_args("stop", "--time", str(timeout),
                                                        self.name),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=self.engine.env)

    def remove(self) -> None:
        subprocess.run(self.engine.podman_args("rm", "--force", self.name), capture_output=True,
                       env=self.engine.env, timeout=120)
        self.proc.stop()


def open_quiet(url: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET /quiet?s=5 through the client: once its first byte is here, the request is in
    flight at the daemon (the upstream holds the rest for 5 s)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("GET", "/quiet?s=5")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read(1) == b"a"
    return conn, response


def stop_drains_and_exits_0(container: Container, url: str) -> None:
    conn, response = open_quiet(url)
    stopper = container.stop()
    try:
        assert response.read() == b"b"  # the rest came during the drain
    finally:
        conn.close()
    assert container.proc.popen.wait(60) == 0, container.proc.log()[-3000:]
    assert stopper.wait(60) == 0
    log = container.proc.log()
    assert "SIGTERM: stopping" in log
    assert "stopping: draining 1 open requests" in log and "drained: no open requests" in log


def share_and_get(container: Container, stack: Stack, config: str) -> str:
    """A viewer made in the container (`peerproxyd share`, as docs/deploy.md says), then
    `peerproxyd connect` on the host with its link: a GET reaches the upstream. The client's
    URL."""
    shared = container.engine.podman("exec", container.name, "peerproxyd", "share", "--config",
                                     config, "--service", "camera", "--name", "alice", "--no-qr")
    link = shared.stdout.strip().splitlines()[-1]
    assert link.startswith("http://") and "&n=alice&" in link, shared.stdout
    port = free_port()
    client = Proc("client", python(
        "-m", "peerproxyd", "connect", link, "--signal", stack.signal_url,
        "--listen", f"127.0.0.1:{port}", "--host-address", "127.0.0.1"), stack.log_dir)
    stack.procs["client"] = client  # stopped with the stack
    client.wait_for_log("is at http", timeout=60)
    url = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{url}/", timeout=30) as r:
        assert r.read() == b"hello from camera\n"
    return url


def test_dockerfile_image_serves_as_non_root_healthy_and_drains_on_stop(engine, tmp_path):
    took = engine.build(ROOT, "localhost/peerproxyd", tmp_path / "build.log")
    print(f"build Dockerfile: {took:.0f} s")
    image = engine.podman("image", "inspect", "localhost/peerproxyd").stdout
    inspected = json.loads(image)[0]
    assert inspected["Config"]["User"] == "peerproxyd:peerproxyd"
    assert inspected["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/docker-healthcheck"]

    stack = Stack(tmp_path)
    container = None
    try:
        stack.upstream("camera")
        stack.signal()
        config_file = daemon_config(
            tmp_path / "peerproxyd.toml", state_dir=Path("/var/lib/peerproxyd"),
            signal_port=stack.signal_port, services={"camera": stack.upstream_ports["camera"]},
            backend="auto")
        mounts = ["-v", "peerproxyd-state:/var/lib/peerproxyd",
                  "-v", f"{config_file}:/etc/peerproxyd/peerproxyd.toml:ro"]
        # The device id, before the first start: `id` makes the key in the named volume.
        made = engine.podman("run", "--rm", "--network", "none", *limits(), *mounts,
                             "localhost/peerproxyd", "id")
        device = re.search(r"^device id: ([a-z2-7]{32})$", made.stdout, re.M)
        assert device is not None, made.stdout + made.stderr

        container = Container(engine, "peerproxyd-test", "localhost/peerproxyd", mounts,
                              tmp_path)
        container.proc.wait_for_log(f"registered as {device[1]}", timeout=60)
        assert "WebRTC backend: native (auto: libdatachannel-py importable)" in \
            container.proc.log()
        assert container.uids() == {USER_ID}  # tini and the daemon

        deadline = time.monotonic() + 30  # the health file follows registration
        while (health := subprocess.run(
                engine.podman_args("healthcheck", "run", container.name), capture_output=True,
                text=True, env=engine.env, timeout=60)).returncode != 0:
            assert time.monotonic() < deadline, health.stdout + health.stderr
            time.sleep(0.5)
        status = engine.podman("exec", container.name, "docker-healthcheck").stdout
        assert status.startswith(f"registered as {device[1]} at {stack.signal_url}")

        url = share_and_get(container, stack, "/etc/peerproxyd/peerproxyd.toml")
        stop_drains_and_exits_0(container, url)
    finally:
        if container is not None:
            container.remove()
        stack.stop()


def test_addon_image_runs_the_daemon_non_root_on_the_native_backend(engine, tmp_path):
    """The add-on's image with its s6 run script as the service, under a stand-in for bashio
    (the test's base has no s6-overlay or bashio: Home Assistant's base image does)."""
    context = tmp_path / "ha-addon"
    shutil.copytree(ADDON, context, ignore=shutil.ignore_patterns("dist"))
    run(["bash", str(ADDON / "prepare.sh"), str(context / "dist")],
        env={**os.environ, "PYTHON": sys.executable})
    took = engine.build(context, "localhost/peerproxyd-addon", tmp_path / "build.log")
    print(f"build add-on: {took:.0f} s")

    stack = Stack(tmp_path)
    container = None
    try:
        stack.upstream("camera")
        stack.signal()
        data = tmp_path / "data"  # Supervisor's /data for the add-on, with its options
        data.mkdir()
        options = {**yaml.safe_load((ADDON / "config.yaml").read_text())["options"],
                   "name": "Container Test", "signaling_url": stack.signal_url,
                   "services": [{"name": "camera",
                                 "url": f"http://127.0.0.1:{stack.upstream_ports['camera']}"}]}
        (data / "options.json").write_text(json.dumps(options))
        stub = bashio_stub(tmp_path)  # its bin/bashio; the rest of it is for the host
        container = Container(engine, "peerproxyd-addon-test", "localhost/peerproxyd-addon", [
            "-v", f"{data}:/data", "-v", f"{stub}:/stub:ro",
            # Supervisor gives an add-on the host's network; here the ICE candidates and the
            # Ingress panel stay on loopback.
            "-e", 'PEERPROXYD_ICE__HOST_ADDRESSES=["127.0.0.1"]',
            "-e", f"PEERPROXYD_DAEMON__PANEL=127.0.0.1:{free_port()}",
            "--entrypoint", "/stub/bashio"], tmp_path,
            command=("/etc/services.d/peerproxyd/run",))  # as s6 runs it, as root
        match = container.proc.wait_for_log(r"registered as ([a-z2-7]{32}) \(Container Test\)",
                                            timeout=60)
        log = container.proc.log()
        assert "[info] Writing /data/peerproxyd.toml from the add-on options" in log
        assert "WebRTC backend: native (auto: libdatachannel-py importable)" in log
        assert container.uids() == {USER_ID}  # the run script dropped root for the daemon
        assert (data / "device.key").stat().st_uid == USER_ID
        assert match[1] in engine.podman("exec", container.name, "peerproxyd", "id", "--config",
                                         "/data/peerproxyd.toml").stdout

        # From the add-on's console (root), as DOCS.md says: the new files are the daemon's.
        url = share_and_get(container, stack, "/data/peerproxyd.toml")
        assert (data / "viewers.json").stat().st_uid == USER_ID
        stop_drains_and_exits_0(container, url)
    finally:
        if container is not None:
            container.remove()
        stack.stop()
