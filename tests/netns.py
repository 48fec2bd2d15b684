"""An emulated home/internet/remote network in Linux network namespaces, for NAT tests.

    home LAN 192.168.50.0/24                internet 203.0.113.0/24          remote LAN 10.77.0.0/24
    dev   .10 (daemon, upstream) --+                                      +-- rv .20 (remote viewer)
    lanv  .20 (LAN viewer) --------+-- hrt --NAT-- inet .1 --NAT-- rrt ---+
                                 br0 .1   wan .10  (signaling,    wan .20  lan .1
                                                    coturn, stun)

`hrt` and `rrt` are home routers that MASQUERADE their LAN behind their WAN address and drop
unsolicited inbound packets. A "cone" router keeps the source port, so a LAN socket has the
same external address for every destination (endpoint-independent mapping; filtering is per
address and port, a "port-restricted cone"): STUN learns the mapping and the peers punch
through. A "symmetric" router adds `--random`: every destination gets its own external port, so
the mapping learnt by STUN is useless to the peer and only a TURN relay gets through.

Everything lives in namespaces this module creates (names `ppx<random>-<role>`); the root
namespace's interfaces, routes and iptables are never touched. `Network.down()` ends the
processes it started, by PID, then deletes the namespaces, which removes their interfaces,
bridges and iptables rules with them.

`python -m tests.netns fetch URL` is a tiny HTTP client for use inside a namespace (the test
process itself runs in the root namespace and cannot reach a viewer's local port).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.support.procs import TEST_BACKEND, Proc, share_link

NatKind = Literal["cone", "symmetric"]

# Addresses: documentation/private ranges, used only inside the namespaces made here.
INET = "203.0.113.1"  # signaling server, coturn, built-in STUN
HOME_WAN = "203.0.113.10"
REMOTE_WAN = "203.0.113.20"
HOME_GW = "192.168.50.1"
DEV = "192.168.50.10"
LAN_VIEWER = "192.168.50.20"
REMOTE_GW = "10.77.0.1"
REMOTE_VIEWER = "10.77.0.20"

SIGNAL_PORT = 8787
TURN_PORT = 3478
TURN_SECRET = "netns-test-turn-secret"
TURN_REALM = "peerproxy.test"
PRIVATE_ADDRESS = re.compile(
    r"\b(10\.\d{1,3}|192\.168|172\.(1[6-9]|2\d|3[01]))\.\d{1,3}\.\d{1,3}\b"
)
"""An RFC 1918 address anywhere in a text (an SDP, a log)."""


def unavailable_reason() -> str | None:
    """Why this machine cannot run namespace tests, or None if it can.

    Checked by really making a namespace with a veth pair and a NAT rule, so a skip names the
    missing piece (root, `ip netns`, veth, nf_tables/iptables NAT), never a guess."""
    if os.geteuid() != 0:
        return "network namespace tests need root (ip netns add)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: make system-deps installs iproute2, iptables)"
    name = f"ppx{secrets.token_hex(3)}-probe"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"],
        ["ip", "netns", "exec", name, "iptables", "-t", "nat", "-A", "POSTROUTING",
         "-o", "probe0", "-j", "MASQUERADE", "--random"],
    ]
    try:
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, timeout=20)
            if result.returncode != 0:
                return (
                    f"this machine lacks a kernel feature the namespace tests need: "
                    f"`{' '.join(step)}` failed: {result.stderr.strip()}"
                )
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
    return None


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name})"

    def cmd(self, *args: str) -> list[str]:
        """`args` as a command line that runs inside this namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def ip(self, *args: str) -> None:
        _run("ip", "-n", self.name, *args)


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


@dataclass
class FetchResult:
    status: int
    size: int
    sha256: str
    seconds: float
    text: str


class Network:
    """The topology above, brought up by `up()` and removed by `down()`."""

    ROLES = ("inet", "hrt", "rrt", "dev", "lanv", "rv")

    def __init__(
        self, log_dir: Path, *, home_nat: NatKind = "cone", remote_nat: NatKind = "cone"
    ) -> None:
        self.log_dir = log_dir
        self.home_nat = home_nat
        self.remote_nat = remote_nat
        self.prefix = f"ppx{secrets.token_hex(3)}"
        self.ns = {role: Namespace(f"{self.prefix}-{role}") for role in self.ROLES}
        self.procs: list[Proc] = []
        self._made: list[Namespace] = []

    # ----- topology
    def up(self) -> Network:
        """Build the topology; on any failure remove what was built, then raise."""
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        for ns in self.ns.values():
            _run("ip", "netns", "add", ns.name)
            self._made.append(ns)
            ns.ip("link", "set", "lo", "up")
            # No IPv6: only the addresses drawn above, no link-local noise or DAD delays.
            ns.run("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
            ns.run("sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
        inet, hrt, rrt = self.ns["inet"], self.ns["hrt"], self.ns["rrt"]
        # The internet: one bridge, the servers' address on it, one port per router.
        self._bridge(inet, "br0", f"{INET}/24")
        self._uplink(inet, "br0", "to-home", hrt, "wan0", f"{HOME_WAN}/24")
        self._uplink(inet, "br0", "to-remote", rrt, "wan0", f"{REMOTE_WAN}/24")
        # Home LAN: a bridge in the router, the device and a LAN viewer on it.
        self._bridge(hrt, "br0", f"{HOME_GW}/24")
        self._host(hrt, "br0", "p-dev", self.ns["dev"], f"{DEV}/24", HOME_GW)
        self._host(hrt, "br0", "p-lanv", self.ns["lanv"], f"{LAN_VIEWER}/24", HOME_GW)
        # Remote LAN: one viewer directly on the router's LAN port.
        rrt.ip("link", "add", "lan0", "type", "veth", "peer", "name", "eth0",
               "netns", self.ns["rv"].name)
        rrt.ip("addr", "add", f"{REMOTE_GW}/24", "dev", "lan0")
        rrt.ip("link", "set", "lan0", "up")
        self._configure_host(self.ns["rv"], f"{REMOTE_VIEWER}/24", REMOTE_GW)
        self._nat(hrt, self.home_nat)
        self._nat(rrt, self.remote_nat)

    def _bridge(self, ns: Namespace, name: str, address: str) -> None:
        ns.ip("link", "add", name, "type", "bridge")
        ns.ip("addr", "add", address, "dev", name)
        ns.ip("link", "set", name, "up")

    def _uplink(
        self, hub: Namespace, bridge: str, port: str, router: Namespace, wan: str, address: str
    ) -> None:
        hub.ip("link", "add", port, "type", "veth", "peer", "name", wan, "netns", router.name)
        hub.ip("link", "set", port, "master", bridge)
        hub.ip("link", "set", port, "up")
        router.ip("addr", "add", address, "dev", wan)
        router.ip("link", "set", wan, "up")

    def _host(
        self, router: Namespace, bridge: str, port: str, host: Namespace, address: str, gw: str
    ) -> None:
        router.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.name)
        router.ip("link", "set", port, "master", bridge)
        router.ip("link", "set", port, "up")
        self._configure_host(host, address, gw)

    def _configure_host(self, host: Namespace, address: str, gw: str) -> None:
        host.ip("addr", "add", address, "dev", "eth0")
        host.ip("link", "set", "eth0", "up")
        # A default route also gives mDNS multicast (224.0.0.251) a way out.
        host.ip("route", "add", "default", "via", gw)

    def _nat(self, router: Namespace, kind: NatKind) -> None:
        router.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE"]
        # Symmetric: a fresh random external port for every destination.
        router.run("iptables", *masquerade, *(["--random"] if kind == "symmetric" else []))
        # Like any home router, drop what nobody on the LAN asked for. Dropping it before
        # conntrack confirms it also matters: an unsolicited packet that were merely rejected
        # would leave a conntrack entry whose tuple clashes with the LAN host's own mapping a
        # moment later, and MASQUERADE would move that host to another port (hole punching
        # between two Linux NATs then fails as if both were symmetric).
        for chain in ("INPUT", "FORWARD"):
            router.run("iptables", "-A", chain, "-i", "wan0", "-m", "conntrack",
                       "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
            router.run("iptables", "-A", chain, "-i", "wan0", "-j", "DROP")

    def down(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception:  # keep tearing down; the namespaces must go
                pass
        self.procs.clear()
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=30)
        self._made.clear()

    # ----- processes
    def start(
        self, role: str, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> Proc:
        proc = Proc(name, self.ns[role].cmd(*args), self.log_dir, env=env)
        self.procs.append(proc)
        return proc

    def python(self, role: str, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        return self.start(role, name, [sys.executable, *args], env=env)

    def wait_port(self, role: str, port: int, proto: str = "tcp", timeout: float = 20.0) -> None:
        """Wait until something listens on `port` inside the namespace (checked with `ss`)."""
        flag = "-ltn" if proto == "tcp" else "-lun"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.ns[role].run("ss", "-H", flag, f"sport = :{port}", check=False)
            if out.strip():
                return
            time.sleep(0.05)
        raise AssertionError(f"nothing listens on {proto} port {port} in {role} after {timeout}s")

    def forward_udp(self, ports: range, to: str = DEV) -> None:
        """Port forwarding on the home router: WAN UDP `ports` go to `to` (same port)."""
        hrt = self.ns["hrt"]
        span = f"{ports.start}:{ports.stop - 1}"
        hrt.run("iptables", "-t", "nat", "-A", "PREROUTING", "-i", "wan0", "-p", "udp",
                "--dport", span, "-j", "DNAT", "--to-destination", to)
        hrt.run("iptables", "-I", "FORWARD", "-i", "wan0", "-p", "udp", "-d", to,
                "--dport", span, "-j", "ACCEPT")

    def udp_sockets(self, role: str, pid: int) -> list[tuple[str, int, str]]:
        """(address, port, peer) of every UDP socket process `pid` has open in namespace
        `role`, as `ss` shows them; peer is "*:*" unless the socket is connected."""
        out = self.ns[role].run("ss", "-H", "-uanp")
        found = []
        for line in out.splitlines():
            if f"pid={pid}," not in line:
                continue
            fields = line.split()
            address, _, port = fields[3].rpartition(":")
            found.append((address.strip("[]"), int(port), fields[4]))
        return found

    def fetch(self, role: str, url: str, *, timeout: float = 60.0) -> FetchResult:
        """GET `url` from inside the namespace."""
        out = self.ns[role].run(sys.executable, "-m", "tests.netns", "fetch", url, str(timeout))
        return FetchResult(**json.loads(out))

    def coturn(self, *, extra: tuple[str, ...] = ()) -> Proc:
        """coturn on the internet segment: STUN + TURN (UDP and TCP) with REST-API secrets.

        Relaying to private (RFC 1918) peers is denied, as a public TURN server should."""
        args = [
            "turnserver", "-n",
            f"--listening-ip={INET}", f"--relay-ip={INET}", f"--listening-port={TURN_PORT}",
            "--min-port=49160", "--max-port=49260",
            f"--realm={TURN_REALM}", "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}",
            "--fingerprint", "--no-tls", "--no-dtls", "--no-cli", "--no-rfc5780",
            "--log-file=stdout", "--simple-log", "--verbose",
            f"--pidfile={self.log_dir / 'turnserver.pid'}",
            f"--userdb={self.log_dir / 'turndb.sqlite'}",
            "--denied-peer-ip=10.0.0.0-10.255.255.255",
            "--denied-peer-ip=172.16.0.0-172.31.255.255",
            "--denied-peer-ip=192.168.0.0-192.168.255.255",
            *extra,
        ]
        proc = self.start("inet", "coturn", args)
        self.wait_port("inet", TURN_PORT, "udp")
        return proc


DEVICE = "test-pi"
"""The default daemon's name (its files and log); NetStack.device_id() gives its id."""
SETUP_RE = re.compile(r"data channel open in (\d+) ms")
REPORT_RE = re.compile(
    r"connected via (?P<type>host|srflx|relay) \((?P<protocol>\w+)\) (?P<rest>.*)"
)


@dataclass
class Report:
    """A connection report as logged by the daemon or the native client."""

    type: str
    protocol: str
    line: str


def report_from_log(proc: Proc, *, count: int = 1, timeout: float = 30.0) -> Report:
    match = proc.wait_for_log(REPORT_RE.pattern, count=count, timeout=timeout)
    return Report(match["type"], match["protocol"], match.group(0))


class NetStack:
    """peerproxyd on a Network: upstream + daemon on `dev`, signaling (and coturn) on `inet`,
    native clients on `lanv` or `rv`."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.signal_url = f"ws://{INET}:{SIGNAL_PORT}/ws"
        self.clients = 0
        self.coturn: Proc | None = None

    def state_dir(self, name: str = DEVICE) -> Path:
        return self.net.log_dir / f"{name}.state"

    def device_id(self, name: str = DEVICE) -> str:
        """The device id of the daemon called `name` (its key is made on first use)."""
        from peerproxyd.trust.identity import load_or_create

        return load_or_create(self.state_dir(name)).device_id

    def services(self, *, coturn: bool = True) -> NetStack:
        if coturn:
            self.coturn = self.net.coturn()
        self.net.python("dev", "upstream", "-m", "tests.support.upstream_app",
                        "--port", "8081", "--name", "camera")
        self.net.python("inet", "signal", "-m", "peerproxyd", "signal",
                        "--host", INET, "--port", str(SIGNAL_PORT),
                        "--stun-port", "0")  # coturn (or the test) owns 3478 here
        self.net.wait_port("dev", 8081)
        self.net.wait_port("inet", SIGNAL_PORT)
        return self

    def daemon(
        self, *, device: str = DEVICE, mdns: bool = True, stun: str | None = f"{INET}:{TURN_PORT}",
        turn: str | None = f"{INET}:{TURN_PORT}", turn_transport: str = "udp",
        port_range: str | None = None, heartbeat_timeout: float = 5.0, extra: str = "",
        backend: str = TEST_BACKEND,
    ) -> Proc:
        from peerproxyd.signaling.turn_credentials import mint

        servers = []
        if stun:
            servers.append(f'{{urls = "stun:{stun}"}}')
        device_id = self.device_id(device)
        if turn:
            cred = mint(TURN_SECRET, device_id)
            servers.append(
                f'{{urls = "turn:{turn}?transport={turn_transport}", '
                f'username = "{cred.username}", credential = "{cred.credential}"}}'
            )
        lines = [
            "[device]", f'state_dir = "{self.state_dir(device)}"',
            "[signaling]", f'url = "{self.signal_url}"', "reconnect_min = 0.1",
            "reconnect_max = 1.0",
            "[ice]", f"mdns = {'true' if mdns else 'false'}", f"servers = [{', '.join(servers)}]",
            *([f'port_range = "{port_range}"'] if port_range else []),
            "[transport]", f'backend = "{backend}"',
            "[limits]", "heartbeat_interval = 1.0", f"heartbeat_timeout = {heartbeat_timeout}",
            "[services.camera]", 'upstream = "http://127.0.0.1:8081"',
        ]
        config = self.net.log_dir / f"{device}.toml"
        config.write_text("\n".join(lines) + "\n" + extra)
        proc = self.net.python("dev", device, "-m", "peerproxyd", "serve", "--config", str(config))
        proc.wait_for_log("registered as")
        return proc

    def client(
        self, role: str, *, device: str = DEVICE, stun: str | None = f"{INET}:{TURN_PORT}",
        port: int = 9000, backend: str = TEST_BACKEND,
    ) -> tuple[Proc, str]:
        """A native client in `role`'s namespace; returns it and its URL (in that namespace)."""
        self.clients += 1
        link = share_link(self.state_dir(device), "camera", f"{role}-{self.clients}")
        args = ["-m", "peerproxyd", "connect", link, "--signal", self.signal_url,
                "--listen", f"127.0.0.1:{port}", "--backend", backend]
        if stun:
            args += ["--ice-server", f"stun:{stun}"]
        proc = self.net.python(role, f"client{self.clients}-{role}", *args)
        proc.wait_for_log("is at http", timeout=40)
        return proc, f"http://127.0.0.1:{port}"


def setup_ms(proc: Proc, count: int = 1) -> int:
    return int(proc.wait_for_log(SETUP_RE.pattern, count=count)[1])


def coturn_relayed(coturn: Proc) -> list[str]:
    """coturn log lines of permissions it granted: without one, TURN relays nothing."""
    return [
        line for line in coturn.log().splitlines()
        if re.search(r"(CREATE_PERMISSION|CHANNEL_BIND) processed, success", line)
    ]


def _fetch(url: str, timeout: float) -> None:
    import hashlib
    import urllib.error
    import urllib.request

    started = time.monotonic()
    digest = hashlib.sha256()
    size = 0
    head = b""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
            while chunk := response.read(1 << 16):
                digest.update(chunk)
                size += len(chunk)
                if len(head) < 4096:
                    head += chunk[: 4096 - len(head)]
    except urllib.error.HTTPError as exc:
        status = exc.code
        head = exc.read()[:4096]
    print(json.dumps({
        "status": status, "size": size, "sha256": digest.hexdigest(),
        "seconds": time.monotonic() - started, "text": head.decode("utf-8", "replace"),
    }))


async def _answer(signal_url: str, device: str) -> None:
    """Offer to `device` and print the answer exactly as the signaling server relayed it."""
    import asyncio

    from aiortc import RTCConfiguration, RTCPeerConnection

    from peerproxyd.signaling.client import SignalingClient

    answer: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

    async def on_message(message: object) -> None:
        if getattr(message, "type", None) == "answer" and not answer.done():
            answer.set_result(getattr(message, "payload", None) or {})

    signaling = SignalingClient(signal_url, backoff_max=1.0)
    task = asyncio.create_task(signaling.run(on_message))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await signaling.wait_connected(10)
        pc.createDataChannel("peerproxy")
        await pc.setLocalDescription(await pc.createOffer())
        await signaling.send("offer", device, {"sdp": pc.localDescription.sdp, "type": "offer"})
        print(json.dumps(await asyncio.wait_for(answer, 20)))
    finally:
        await pc.close()
        await signaling.close()
        task.cancel()


def answer_seen_by_signaling(net: Network, role: str, device: str = DEVICE) -> str:
    """The SDP answer of `device` as the signaling server relayed it to a viewer in `role`."""
    out = net.ns[role].run(
        sys.executable, "-m", "tests.netns", "answer", f"ws://{INET}:{SIGNAL_PORT}/ws", device
    )
    return str(json.loads(out)["sdp"])


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "fetch":
        _fetch(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 60.0)
    elif len(sys.argv) == 4 and sys.argv[1] == "answer":
        import asyncio

        asyncio.run(_answer(sys.argv[2], sys.argv[3]))
    else:
        sys.exit("usage: python -m tests.netns fetch URL [TIMEOUT] | answer SIGNAL_URL DEVICE")
