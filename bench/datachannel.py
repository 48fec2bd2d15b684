"""Data-channel benchmark: stock aiortc, peerproxyd's tuned aiortc and the native backend,
side by side.

Every end other than Chromium is bench/_dcpeer.py: peerproxyd's own transport
(peerproxyd.rtc.transport.new_transport, driven as peer.py and client/native.py drive it) in one of
three variants:

    stock     the aiortc backend with none of peerproxyd's aiortc speed-ups
    ours      the aiortc backend with the speed-ups (rtc/aiortc_setup.py SPEEDUPS; what ships)
    native    the native backend (peerproxyd/rtc/transport_native.py, libdatachannel-py), run by
              `--native-python` (a Python >= 3.12 with libdatachannel-py)

on two paths, the daemon's end always the answerer:

    native    the native client's end (offerer, same variant, as `peerproxyd connect`) <-> daemon
    chromium  headless Chromium (offerer, a page driven over Playwright) <-> daemon

Each pair moves N bytes (100 MB; `--quick` 20 MB) in 16 KiB messages both ways: `down`
(daemon -> client) and `up` (client -> daemon), with peerproxyd's backpressure thresholds,
every message sequence-numbered and checked on arrival. Each transfer is timed from the
command to the receiver's last byte; CPU seconds of each process (Chromium: its whole process
tree) come from /proc/<pid>/stat. Every transfer runs twice: the daemon peer free to use both
cores, and pinned to core 0 (sched_setaffinity, i.e. `taskset -c 0`) as a Raspberry Pi
stand-in. A run measures every pair, variant, direction and pinning back to back (the variant
order alternating between runs); the figures are min / median across runs, and ratios are
taken within a run (the noise of a shared machine hits both variants alike).

    python -m bench.datachannel              # full, 3 runs: bench/datachannel-latest.json,
                                             # bench/datachannel.png, bench/results/
    python -m bench.datachannel --quick      # 20 MB, 2 runs; writes only under bench/results/
    python -m bench.datachannel --no-chromium --runs 5 --speedups sack

Everything runs in a network namespace made for the run (loopback only; recipe A of
../shared/chromium-webrtc.md), every process is started here and ended by its PID, and the
namespace is deleted at the end. Needs root for the namespace; without root it runs the native
path on the root namespace's loopback and skips Chromium. MB/s is 10^6 bytes per second.
"""

from __future__ import annotations

import os
import sys

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _BENCH_DIR]
sys.path.insert(0, os.path.dirname(_BENCH_DIR))

import argparse  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench._measure import cpu_seconds, descendants, machine, machine_busy, progress  # noqa: E402
from peerproxyd.tunnel.channel import HIGH_WATER, LOW_WATER  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MB = 1_000_000
PER = 100 * MB  # CPU seconds are reported per 100 MB
TIMEOUT = 300.0
VARIANTS = ("stock", "ours", "native")  # aiortc without / with our speed-ups; libdatachannel-py
NATIVE_PYTHON = ROOT / ".venv313" / "bin" / "python"  # a Python >= 3.12 with libdatachannel-py
DIRECTIONS = ("down", "up")  # down: daemon -> client; up: client -> daemon
REFERENCES = {"thesis (PeerProxy, 2.6 MB/s)": 2.6, "ngrok (14.08 MB/s)": 14.08}

PAGE_JS = """
window.bench = {
  peers: {},
  async offer(name) {
    const pc = new RTCPeerConnection({iceServers: []});
    const dc = pc.createDataChannel('bench', {ordered: true});
    dc.binaryType = 'arraybuffer';
    dc.bufferedAmountLowThreshold = %(low)d;
    const st = {pc, dc, t0: performance.now(), openMs: null, onData: null};
    st.opened = new Promise(r => {
      dc.onopen = () => { st.openMs = performance.now() - st.t0; r(); };
    });
    dc.onmessage = e => st.onData && st.onData(e.data);
    this.peers[name] = st;
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise(r => {
      if (pc.iceGatheringState === 'complete') return r();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
    });
    return pc.localDescription.sdp;
  },
  async answer(name, sdp) {
    const st = this.peers[name];
    await st.pc.setRemoteDescription({type: 'answer', sdp});
    await st.opened;
    return st.openMs;
  },
  async send(name, total) {
    const dc = this.peers[name].dc;
    const block = new Uint8Array(%(message)d);
    crypto.getRandomValues(block);
    const view = new DataView(block.buffer);
    let seq = 0;
    for (let left = total; left > 0; seq++) {
      if (dc.bufferedAmount > %(high)d) {
        await new Promise(r => {
          dc.onbufferedamountlow = () => { dc.onbufferedamountlow = null; r(); };
        });
      }
      const n = Math.min(block.length, left);
      view.setUint32(0, Math.floor(seq / 4294967296)); view.setUint32(4, seq >>> 0);
      dc.send(n === block.length ? block : block.subarray(0, n));
      left -= n;
    }
    return seq;
  },
  arm(name, total) {
    const st = this.peers[name];
    const r = {received: 0, messages: 0, error: null};
    st.result = new Promise(resolve => {
      st.onData = data => {
        const v = new DataView(data);
        const seq = v.getUint32(0) * 4294967296 + v.getUint32(4);
        if (seq !== r.messages && r.error === null) {
          r.error = `message ${r.messages}: sequence ${seq}`;
        }
        r.messages++; r.received += data.byteLength;
        if (r.received >= total) {
          if (r.received !== total && r.error === null) {
            r.error = `received ${r.received} of ${total}`;
          }
          st.onData = null; resolve(r);
        }
      };
    });
    return true;
  },
  async result(name) { return await this.peers[name].result; },
};
""" % {"low": LOW_WATER, "high": HIGH_WATER, "message": 16 * 1024}


# ----------------------------------------------------------------------------- processes
class LinePeer:
    """A child speaking JSON lines on stdin/stdout (bench/_dcpeer.py), every read bounded."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self._log = open(log_dir / f"{name}.log", "ab")
        self.popen = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.popen.stdout is not None
        os.set_blocking(self.popen.stdout.fileno(), False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.popen.stdout, selectors.EVENT_READ)
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def write(self, message: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(message) + "\n").encode())
        self.popen.stdin.flush()

    def read(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: nothing for {timeout:.0f} s")
            if not self._selector.select(left):
                continue
            assert self.popen.stdout is not None
            chunk = self.popen.stdout.read()
            if not chunk and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); see its log")
            self._buffer += chunk or b""
        line, _, self._buffer = self._buffer.partition(b"\n")
        return dict(json.loads(line))

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                self.write({"cmd": "quit"})
                self.popen.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.popen.kill()  # this PID only
                self.popen.wait(10)
        self._log.close()


class World:
    """The namespace (when root) and what runs in it."""

    def __init__(self, log_dir: Path, chromium: bool) -> None:
        self.log_dir = log_dir
        self.ns: str | None = None
        self.peers: list[LinePeer] = []
        self.agent: Any = None
        self.want_chromium = chromium

    def up(self) -> None:
        if os.geteuid() == 0 and shutil.which("ip"):
            self.ns = f"ppdc-{secrets.token_hex(3)}"
            subprocess.run(["ip", "netns", "add", self.ns], check=True, timeout=30)
            subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True, timeout=30)
        if self.want_chromium:
            from tests.browser.harness import Agent, unavailable_reason

            reason = unavailable_reason()
            if reason or self.ns is None:
                progress(f"Chromium path skipped: {reason or 'no namespace'}")
            else:
                self.agent = Agent(self.ns, self.log_dir)
                self.agent.new_page()
                self.agent.page.evaluate(PAGE_JS)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns] if self.ns else []

    def peer(self, name: str, role: str, speedups: str, native: str | None = None) -> LinePeer:
        """A bench/_dcpeer.py peer: the aiortc backend with these speed-ups, or with `native`
        (a Python with libdatachannel-py) the native backend in that interpreter."""
        python, backend = (native, "native") if native else (sys.executable, "aiortc")
        args = [*self.prefix(), python, "-m", "bench._dcpeer", role, "--backend", backend]
        if speedups and not native:
            args += ["--speedups", speedups]
        peer = LinePeer(name, args, self.log_dir)
        self.peers.append(peer)
        return peer

    def down(self) -> None:
        for peer in self.peers:
            peer.stop()
        if self.agent is not None:
            self.agent.quit()
        if self.ns:
            out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
            for pid in out.stdout.split():  # only children of ours can be in there
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)

    def drop_udp(self, probability: float) -> None:
        """Drop this share of the UDP datagrams in the namespace, at random (iptables)."""
        subprocess.run([*self.prefix(), "iptables", "-A", "INPUT", "-p", "udp", "-m", "statistic",
                        "--mode", "random", "--probability", str(probability), "-j", "DROP"],
                       check=True, capture_output=True, timeout=30)

    def dropped(self) -> int:
        """UDP datagrams dropped by drop_udp so far."""
        out = subprocess.run([*self.prefix(), "iptables", "-L", "INPUT", "-v", "-x", "-n"],
                             check=True, capture_output=True, text=True, timeout=30).stdout
        return sum(int(line.split()[0]) for line in out.splitlines() if "statistic" in line)

    def udp_errors(self) -> int:
        """UDP receive-buffer errors in the namespace (datagrams dropped: a full socket)."""
        out = subprocess.run([*self.prefix(), "cat", "/proc/net/snmp"], capture_output=True,
                             text=True, timeout=10).stdout
        udp = [line.split() for line in out.splitlines() if line.startswith("Udp:")]
        return int(dict(zip(udp[0][1:], udp[1][1:])).get("RcvbufErrors", 0)) if udp else 0


class Pair:
    """One data channel: a client end (aiortc peer or Chromium page) and a daemon peer."""

    def __init__(self, world: World, path: str, variant: str, speedups: str,
                 client_speedups: str | None = None, native: str | None = None) -> None:
        self.world, self.path, self.variant = world, path, variant
        self.key = f"{path}-{variant}"
        self.daemon = world.peer(f"{self.key}-daemon", "answer", speedups, native)
        self.client: LinePeer | None = None
        if path == "native":
            client = speedups if client_speedups is None else client_speedups
            self.client = world.peer(f"{self.key}-client", "offer", client, native)
            offer = self.client.read(60)
        else:
            offer = {"type": "offer", "sdp": world.agent.page.evaluate(
                "n => bench.offer(n)", self.key)}
        self.daemon.write(offer)
        answer = self.daemon.read(60)
        if self.client is not None:
            self.client.write(answer)
            self.setup_ms = self.client.read(60)["ms"]
        else:
            self.setup_ms = world.agent.page.evaluate(
                "([n, sdp]) => bench.answer(n, sdp)", [self.key, answer["sdp"]])
        self.daemon.read(60)  # open

    def client_pids(self) -> list[int]:
        if self.client is not None:
            return [self.client.pid]
        return descendants(self.world.agent.chromium_pid)

    def transfer(self, direction: str, total: int) -> dict[str, Any]:
        """Move `total` bytes one way; time and CPU of both ends."""
        page = self.world.agent.page if self.client is None else None
        client_pids = self.client_pids()
        cpu0 = {"daemon": cpu_seconds(self.daemon.pid),
                "client": sum(map(cpu_seconds, client_pids))}
        busy0, errors0 = machine_busy(), self.world.udp_errors()
        t0 = time.perf_counter()
        if direction == "up":  # client -> daemon
            self.daemon.write({"cmd": "recv", "bytes": total})
            self.daemon.read(30)  # armed
            t0 = time.perf_counter()
            if page is not None:
                page.evaluate("([n, t]) => bench.send(n, t)", [self.key, total])
            else:
                assert self.client is not None
                self.client.write({"cmd": "send", "bytes": total})
                self.client.read()
            result = self.daemon.read()
        else:  # daemon -> client
            if page is not None:
                page.evaluate("([n, t]) => bench.arm(n, t)", [self.key, total])
            else:
                assert self.client is not None
                self.client.write({"cmd": "recv", "bytes": total})
                self.client.read(30)
            t0 = time.perf_counter()
            self.daemon.write({"cmd": "send", "bytes": total})
            self.daemon.read()  # sent (queued)
            result = (page.evaluate("n => bench.result(n)", self.key) if page is not None
                      else self.client.read())  # type: ignore[union-attr]
        seconds = time.perf_counter() - t0
        if result.get("error") or result["received"] != total:
            raise RuntimeError(f"{self.key} {direction}: data not intact: {result}")
        cpu = {"daemon": cpu_seconds(self.daemon.pid) - cpu0["daemon"],
               "client": sum(map(cpu_seconds, client_pids)) - cpu0["client"]}
        ours = cpu["daemon"] + cpu["client"]
        return {
            "seconds": seconds,
            "mb_s": total / seconds / MB,
            "cpu_s_per_100mb": {k: v * PER / total for k, v in cpu.items()},
            "cpu_cores": {k: v / seconds for k, v in cpu.items()},
            "udp_rcvbuf_errors": self.world.udp_errors() - errors0,
            "other_processes_cores": max(0.0, machine_busy() - busy0 - ours) / seconds,
            "loadavg_1min": os.getloadavg()[0],  # ours included: ~2 while a transfer runs
        }

    def pin(self, pinned: bool) -> None:
        os.sched_setaffinity(self.daemon.pid, {0} if pinned else set(range(os.cpu_count() or 1)))


# ----------------------------------------------------------------------------- summary
def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """min / median per (path, variant, direction, pinned), and the ours/stock ratios of the
    same run and condition."""
    groups: dict[tuple[str, str, str, bool], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["path"], r["variant"], r["direction"], r["pinned"]), []).append(r)
    rows = []
    def order(key: tuple[str, str, str, bool]) -> tuple[int, int, bool, int]:
        path, variant, direction, pinned = key
        return (path != "native", DIRECTIONS.index(direction), pinned, VARIANTS.index(variant))

    for (path, variant, direction, pinned), rs in sorted(groups.items(), key=lambda g: order(g[0])):
        mbs = [r["mb_s"] for r in rs]
        row: dict[str, Any] = {
            "path": path, "variant": variant, "direction": direction, "pinned": pinned,
            "n": len(rs), "mb_s": {"min": min(mbs), "median": statistics.median(mbs)},
            "cpu_s_per_100mb": {
                end: statistics.median(r["cpu_s_per_100mb"][end] for r in rs)
                for end in ("daemon", "client")
            },
            "udp_rcvbuf_errors": statistics.median(r["udp_rcvbuf_errors"] for r in rs),
        }
        if variant != "stock":
            stock = {r["run"]: r for r in groups.get((path, "stock", direction, pinned), [])}
            pairs = [(r, stock[r["run"]]) for r in rs if r["run"] in stock]
            if pairs:
                speed = [o["mb_s"] / s["mb_s"] for o, s in pairs]
                cpu = [o["cpu_s_per_100mb"]["daemon"] / s["cpu_s_per_100mb"]["daemon"]
                       for o, s in pairs]
                row["vs_stock"] = {
                    "mb_s_ratio": {"min": min(speed), "median": statistics.median(speed)},
                    "daemon_cpu_per_mb_ratio": statistics.median(cpu),
                }
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| path | direction | daemon | variant | MB/s min / median | ÷ stock (min / median) "
        "| CPU s per 100 MB daemon / client | ÷ stock daemon CPU per MB | rcvbuf drops |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = r.get("vs_stock")
        ratio = ""
        if vs:
            ratio = f"{vs['mb_s_ratio']['min']:.2f} / **{vs['mb_s_ratio']['median']:.2f}**"
        cpu_ratio = f"{vs['daemon_cpu_per_mb_ratio']:.2f}" if vs else ""
        lines.append(
            f"| {r['path']} | {r['direction']} | {'1 core' if r['pinned'] else '2 cores'} "
            f"| {r['variant']} | {r['mb_s']['min']:.1f} / {r['mb_s']['median']:.1f} | {ratio} "
            f"| {r['cpu_s_per_100mb']['daemon']:.1f} / {r['cpu_s_per_100mb']['client']:.1f} "
            f"| {cpu_ratio} | {r['udp_rcvbuf_errors']:g} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str,
         variants: tuple[str, ...] = VARIANTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if not r["pinned"]] + [r for r in rows if r["pinned"]]
    labels = [f"{r['path']}\n{r['direction']}, {'1 core' if r['pinned'] else '2 cores'}"
              for r in shown if r["variant"] == "stock"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    width = 0.8 / len(variants)
    names = {"stock": "stock aiortc", "ours": "peerproxyd, aiortc backend (tuned)",
             "native": "peerproxyd, native backend (libdatachannel-py)"}
    colors = {"stock": "tab:gray", "ours": "tab:red", "native": "tab:green"}
    for i, variant in enumerate(variants):
        rs = [r for r in shown if r["variant"] == variant]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(rs))]
        color, name = colors[variant], names[variant]
        left.bar(xs, [r["mb_s"]["median"] for r in rs], width, color=color, label=name)
        left.errorbar(xs, [r["mb_s"]["median"] for r in rs],
                      yerr=[[r["mb_s"]["median"] - r["mb_s"]["min"] for r in rs], [0] * len(rs)],
                      fmt="none", ecolor="black", capsize=2)
        right.bar(xs, [r["cpu_s_per_100mb"]["daemon"] for r in rs], width, color=color, label=name)
    for (label, value), style in zip(REFERENCES.items(), ("--", ":")):
        left.axhline(value, color="tab:blue", linestyle=style, label=label)
    for axis in (left, right):
        axis.set_xticks(range(len(labels)), labels, fontsize=7)
        axis.grid(True, axis="y", alpha=0.3)
    left.set_ylabel("MB/s (bar: median of runs; whisker down to min)")
    left.set_title("throughput, 16 KiB messages")
    right.set_ylabel("daemon CPU seconds per 100 MB (median)")
    right.set_title("daemon CPU per 100 MB")
    left.set_ylim(0, max(r["mb_s"]["median"] for r in rows) * 1.35)  # room for the legend
    left.legend(fontsize=7, loc="upper left", ncol=2)
    fig.suptitle(textwrap.fill(title, 150), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_title(report: dict[str, Any]) -> str:
    m = report["machine"]
    return (f"peerproxyd bench/datachannel.py {report['timestamp']}: {m['nproc']} x "
            f"{m['cpu_model']}, Python {m['python']}, aiortc {m['versions']['aiortc']}, "
            f"{m['chromium']}, {'native: ' + m['native'] + ', ' if m.get('native') else ''}"
            f"{report['runs']} runs of {report['bytes_per_transfer'] / MB:g} MB, loopback")


def replot(source: Path, png: Path) -> None:
    """Draw the plot of a report written earlier (its JSON) again."""
    report = json.loads(source.read_text())
    variants = tuple(v for v in VARIANTS if any(r["variant"] == v for r in report["summary"]))
    plot(report["summary"], png, plot_title(report), variants)


def native_runtime(python: str | None) -> str | None:
    """"Python X, libdatachannel-py Y" of the native variant's interpreter."""
    if not python:
        return None
    code = ("import platform; from importlib.metadata import version; "
            "print(f'Python {platform.python_version()}, libdatachannel-py "
            "{version(\"libdatachannel-py\")}')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or None


def native_python(path: str) -> str | None:
    """`path` if it is a Python that imports libdatachannel, else None (said on stderr)."""
    try:
        subprocess.run([path, "-c", "import libdatachannel"], check=True, capture_output=True,
                       timeout=60)
    except (OSError, subprocess.SubprocessError):
        progress(f"native variant skipped: {path} cannot import libdatachannel")
        return None
    return path


# ----------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 MB per transfer, 2 runs")
    parser.add_argument("--runs", type=int, default=None, help="runs (default 3; quick 2)")
    parser.add_argument("--mb", type=float, default=None, help="MB per transfer (100; quick 20)")
    parser.add_argument("--no-chromium", action="store_true", help="the native path only")
    parser.add_argument("--no-pinned", action="store_true", help="skip the 1-core runs")
    parser.add_argument("--speedups", default="all",
                        help='speed-ups of the "ours" variant: "all" or comma-separated names')
    parser.add_argument("--native-python", default=str(NATIVE_PYTHON),
                        help="a Python >= 3.12 with libdatachannel-py for the native variant "
                             "(default .venv313/bin/python; skipped when missing)")
    parser.add_argument("--no-native", action="store_true", help="skip the native variant")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="only draw bench/datachannel.png again from this report")
    args = parser.parse_args()
    if args.replot:
        replot(args.replot, BENCH / "datachannel.png")
        return 0
    native = None if args.no_native else native_python(args.native_python)
    variants = VARIANTS if native else VARIANTS[:2]
    runs = args.runs or (2 if args.quick else 3)
    total = int((args.mb or (20 if args.quick else 100)) * MB)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"datachannel{'-quick' if args.quick else ''}-{stamp}"
    results_dir = BENCH / "results"
    log_dir = results_dir / name
    log_dir.mkdir(parents=True, exist_ok=True)

    world = World(log_dir, chromium=not args.no_chromium)
    records: list[dict[str, Any]] = []
    setup: dict[str, float] = {}
    began = time.perf_counter()
    loadavg_at_start = os.getloadavg()
    try:
        world.up()
        paths = ["native"] + (["chromium"] if world.agent is not None else [])
        pairs = {}
        for path in paths:
            for variant in variants:
                pair = Pair(world, path, variant, "" if variant == "stock" else args.speedups,
                            native=native if variant == "native" else None)
                pairs[(path, variant)] = pair
                setup[pair.key] = pair.setup_ms
                progress(f"{pair.key}: channel open in {pair.setup_ms:.0f} ms")
        pinnings = (False,) if args.no_pinned else (False, True)
        for run in range(runs):
            order = variants if run % 2 == 0 else variants[::-1]
            for path in paths:
                for pinned in pinnings:
                    for direction in DIRECTIONS:
                        for variant in order:
                            pair = pairs[(path, variant)]
                            pair.pin(pinned)
                            r = pair.transfer(direction, total)
                            pair.pin(False)
                            records.append({"run": run, "path": path, "variant": variant,
                                            "direction": direction, "pinned": pinned,
                                            "bytes": total, **r})
                            progress(
                                f"run {run + 1}/{runs} {path:8} {direction:4} "
                                f"{'1 core ' if pinned else '2 cores'} {variant:5} "
                                f"{r['mb_s']:6.1f} MB/s  CPU s/100 MB daemon "
                                f"{r['cpu_s_per_100mb']['daemon']:5.1f} client "
                                f"{r['cpu_s_per_100mb']['client']:5.1f}  drops "
                                f"{r['udp_rcvbuf_errors']}  other load "
                                f"{r['other_processes_cores']:.2f}"
                            )
    finally:
        world.down()
    rows = summarize(records)
    m = machine(("aiortc", "aioice", "uvloop", "pyOpenSSL", "cryptography", "playwright"),
                watched=("peerproxyd", "bench"), chromium=True)
    m["native"] = native_runtime(native)
    report = {
        "timestamp": stamp, "mode": "quick" if args.quick else "full", "runs": runs,
        "bytes_per_transfer": total, "message_bytes": 16 * 1024,
        "speedups": args.speedups, "native_python": native,
        "duration_s": time.perf_counter() - began, "loadavg_at_start": loadavg_at_start,
        "namespace": world.ns is not None, "machine": m, "setup_ms": setup,
        "units": {"mb_s": "10^6 bytes per second", "cpu_s_per_100mb": "CPU seconds per 10^8 bytes"},
        "summary": rows, "records": records,
    }
    text = json.dumps(report, indent=1) + "\n"
    (results_dir / f"{name}.json").write_text(text)
    title = plot_title(report)
    outputs = [results_dir / f"{name}.json"]
    png = results_dir / f"{name}.png"
    if not args.quick:
        (BENCH / "datachannel-latest.json").write_text(text)
        outputs.append(BENCH / "datachannel-latest.json")
        png = BENCH / "datachannel.png"
    plot(rows, png, title, variants)
    outputs.append(png)
    md = table(rows)
    (results_dir / f"{name}.md").write_text(md + "\n")
    print(f"\n{runs} runs of {total / MB:g} MB; speed-ups of 'ours': {args.speedups}\n")
    print(md)
    load = [r["other_processes_cores"] for r in records]
    if load:
        loadavg = [r["loadavg_1min"] for r in records]
        print(f"\nother processes on this machine: median {statistics.median(load):.2f}, "
              f"max {max(load):.2f} cores of {m['nproc']}; 1-minute load average "
              f"min {min(loadavg):.2f}, median {statistics.median(loadavg):.2f}, "
              f"max {max(loadavg):.2f}")
    print(f"\nwrote {', '.join(str(o.relative_to(ROOT)) for o in outputs)} "
          f"in {report['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
