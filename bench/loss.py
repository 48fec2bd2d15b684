"""Throughput and latency under packet loss and delay (issue 17 item 3).

One network namespace (tests/browser/harness.py's BrowserWorld: the test app, the signaling
server, the daemon on `--backend` (aiortc; native with the Python 3.13 venv), headless
Chromium; loopback only) and, in it, three paths to the same kind of bytes, side by side, set
up once and measured cell after cell:

    native    `peerproxyd connect --backend B` -> data channel -> daemon -> app   (HTTP GETs)
    chromium  the app's frame: service worker -> page -> data channel -> daemon -> app
    raw       two peers, no proxy: the offerer asks for N bytes, the answerer sends them in
              16 KiB messages (bench/_procs.py's "get" protocol). aiortc: bare RTCPeerConnections
              with the daemon's process settings (configure_ice: our aioice fixes, every aiortc
              speed-up); native: peerproxyd's transport on libdatachannel-py

For each cell (loss %, RTT) tests/support/impair.py (netem's model on an NFQUEUE: this kernel
has no sch_netem) is put on every UDP packet of the namespace (`iptables -A OUTPUT -o lo -p
udp -j NFQUEUE`): a loopback packet passes OUTPUT once, so each direction is dropped with
probability `loss` and held RTT/2. TCP (the app, the native client's local port, the page's
signaling) is not touched: only the data channels see the loss. Per cell and path:

- bulk: one GET of a body sized so that the transfer takes about `--target` seconds at the
  rate the Mathis formula predicts (at most 16 MB; 4 MB with `--quick`), MB/s = 10^6 B/s;
- 1 KB: sequential GETs of 1,000 B (`--count`, at most `--budget` seconds), p50 and p99.

Every transfer is bounded (`--limit` seconds per transfer; the cell's bodies are cut there and
the cut is recorded). Writes bench/loss-latest.json and bench/loss.png; `--render` redoes the
plot and prints the README table from the JSON. Needs root (ip netns):

    python bench/loss.py --quick     # ~4 minutes
    python bench/loss.py             # ~20 minutes
    .venv313/bin/python bench/loss.py --backend native   # kept beside the aiortc run
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Not bench/ itself on the path (as bench/browser.py): the repository, so `bench.` and `tests.`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from typing import Any  # noqa: E402

BENCH = ROOT / "bench"
SMALL = 1000
MSS = 1160  # aiortc's USERDATA_MAX_LENGTH: DATA chunk payload per packet
PATHS = ("native", "chromium", "raw")
NATIVE_PORT = 9000
QUEUE = 0
# (loss, RTT ms, impairer on): a baseline without the impairer, then the matrix.
CELLS = [(0.0, 0, False), (0.0, 0, True),
         *((loss, rtt, True) for rtt in (20, 100) for loss in (0.0, 0.01, 0.05))]

BULK_JS = """async ({size, limit}) => {
    const t = performance.now();
    const r = await fetch('/download?size=' + size + '&n=' + Math.random(), {cache: 'no-store'});
    const reader = r.body.getReader();
    let got = 0;
    for (;;) {
        const left = limit - (performance.now() - t);
        if (left <= 0) { reader.cancel(); break; }
        const step = await Promise.race([reader.read(),
            new Promise(ok => setTimeout(() => ok({timeout: true}), left))]);
        if (step.timeout) { reader.cancel(); break; }
        if (step.done) break;
        got += step.value.length;
    }
    return {seconds: (performance.now() - t) / 1000, bytes: got};
}"""

SMALL_JS = """async ({size, count, budget}) => {
    const out = [];
    const start = performance.now();
    for (let i = 0; i < count && performance.now() - start < budget; i++) {
        const t = performance.now();
        const r = await fetch('/download?size=' + size + '&n=' + i + Math.random(),
                              {cache: 'no-store'});
        const got = await r.arrayBuffer();
        if (!r.ok || got.byteLength !== size) throw new Error('bad answer ' + r.status);
        out.push((performance.now() - t) / 1000);
    }
    return out;
}"""


# ----------------------------------------------------------------------------- in the namespace
def probe(url: str, size: int, count: int, budget: float, limit: float) -> None:
    """The native client's side (run inside the namespace): one bulk GET cut at `limit`
    seconds, then sequential 1 KB GETs on one keep-alive connection; prints JSON."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=limit)
    conn.request("GET", f"/download?size={SMALL}&n=warm")
    conn.getresponse().read()
    t0 = time.perf_counter()
    conn.request("GET", f"/download?size={size}")
    response = conn.getresponse()
    got = 0
    while got < size and time.perf_counter() - t0 < limit:
        chunk = response.read1(1 << 16)
        if not chunk:
            break
        got += len(chunk)
    bulk = {"seconds": time.perf_counter() - t0, "bytes": got}
    conn.close()  # a cut body leaves the connection unusable: a fresh one for the small GETs
    conn = http.client.HTTPConnection(host, int(port), timeout=limit)
    small: list[float] = []
    began = time.perf_counter()
    for i in range(count):
        if time.perf_counter() - began > budget:
            break
        t = time.perf_counter()
        conn.request("GET", f"/download?size={SMALL}&n={i}")
        body = conn.getresponse().read()
        if len(body) != SMALL:
            raise SystemExit(f"short 1 KB answer: {len(body)} bytes")
        small.append(time.perf_counter() - t)
    print(json.dumps({"bulk": bulk, "small": small}))


# ----------------------------------------------------------------------------- the run
def mathis_mb_s(loss: float, rtt_ms: int) -> float:
    """Mathis et al.: MSS / RTT * sqrt(3/2) / sqrt(p), in MB/s (inf without loss or delay)."""
    if loss <= 0 or rtt_ms <= 0:
        return math.inf
    return MSS / (rtt_ms / 1000) * math.sqrt(1.5) / math.sqrt(loss) / 1e6


def bulk_size(loss: float, rtt_ms: int, target: float, most: int) -> int:
    """A body that takes about `target` seconds at the Mathis rate: 0.25 MB .. `most`."""
    rate = mathis_mb_s(loss, rtt_ms)
    return most if math.isinf(rate) else int(min(most, max(250_000, rate * 1e6 * target)))


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


class Bench:
    def __init__(self, log_dir: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.log_dir = log_dir
        self.world = LossWorld(log_dir, args.backend)
        self.native_url = f"http://127.0.0.1:{NATIVE_PORT}"
        self.raw: Any = None
        self.loop = asyncio.new_event_loop()

    # ----- set-up
    def up(self) -> None:
        from tests.browser.harness import SIGNAL_PORT

        world = self.world
        world.up()
        link = world.share("loss-native")
        client = world.start("client", "-m", "peerproxyd", "connect", link,
                             "--signal", f"ws://127.0.0.1:{SIGNAL_PORT}/ws",
                             "--listen", f"127.0.0.1:{NATIVE_PORT}",
                             "--host-address", "127.0.0.1", "--backend", self.args.backend)
        client.wait_for_log("is at http", timeout=40)
        world.open("/")
        self.start_raw()

    def start_raw(self) -> None:
        from bench._procs import PrefixedRawPair

        # aiortc: a bare RTCPeerConnection with the daemon's settings; native: peerproxyd's
        # transport (libdatachannel-py), as the daemon makes it.
        child = ([str(Path(__file__).resolve()), "rawpeer"] if self.args.backend == "aiortc"
                 else [str(Path(__file__).resolve()), "rawpeer-native"])
        self.raw = PrefixedRawPair(self.log_dir, ["ip", "netns", "exec", self.world.ns], child)
        self.loop.run_until_complete(self.raw.start())

    def down(self) -> None:
        if self.raw is not None:
            self.loop.run_until_complete(self.raw.stop())
        self.world.down()
        self.loop.close()

    @contextlib.contextmanager
    def impaired(self, loss: float, rtt_ms: int) -> Iterator[None]:
        """impair.py on every UDP packet of the namespace, each way loss and RTT/2."""
        proc = self.world.start("impair", "-m", "tests.support.impair", str(QUEUE),
                                str(rtt_ms / 2000), str(loss), "0")
        proc.wait_for_log("ready")
        rule = ["OUTPUT", "-o", "lo", "-p", "udp", "-j", "NFQUEUE", "--queue-num", str(QUEUE),
                "--queue-bypass"]
        try:
            self.world.ns_run("iptables", "-A", *rule)
            yield
        finally:
            subprocess.run(["ip", "netns", "exec", self.world.ns, "iptables", "-D", *rule],
                           capture_output=True, timeout=30)
            proc.stop()

    # ----- one path
    def native(self, size: int) -> dict[str, Any]:
        a = self.args
        out = subprocess.run(
            ["ip", "netns", "exec", self.world.ns, sys.executable, str(Path(__file__).resolve()),
             "probe", self.native_url, str(size), str(a.count), str(a.budget), str(a.limit)],
            capture_output=True, text=True, timeout=2 * a.limit + a.budget + 60, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f"native probe: {out.stderr.strip()[-2000:]}")
        return dict(json.loads(out.stdout))

    def chromium(self, size: int) -> dict[str, Any]:
        a = self.args
        agent = self.world.agent

        def evaluate(js: str, arg: dict[str, Any], timeout: float) -> Any:
            return agent.request("call", timeout=timeout, target="app", method="evaluate",
                                 args=[js, arg], kwargs={})

        evaluate(SMALL_JS, {"size": SMALL, "count": 1, "budget": 60_000}, a.limit + 30)
        bulk = evaluate(BULK_JS, {"size": size, "limit": a.limit * 1000}, a.limit + 60)
        small = evaluate(SMALL_JS, {"size": SMALL, "count": a.count, "budget": a.budget * 1000},
                         a.budget + 2 * a.limit + 60)
        return {"bulk": bulk, "small": small}

    def raw_path(self, size: int) -> dict[str, Any]:
        a = self.args
        self.loop.run_until_complete(self.raw.get(SMALL, 1, 60, a.limit))
        t0 = time.perf_counter()
        try:
            seconds = self.loop.run_until_complete(self.raw.get(size, 1, a.limit, a.limit))[0]
            bulk = {"seconds": seconds, "bytes": size}
        except TimeoutError:  # the pair is mid-transfer: a new one for what follows
            bulk = {"seconds": time.perf_counter() - t0, "bytes": 0, "cut": True}
            self.loop.run_until_complete(self.raw.stop())
            self.start_raw()
        small = self.loop.run_until_complete(
            self.raw.get(SMALL, a.count, a.budget, a.budget + 2 * a.limit))
        return {"bulk": bulk, "small": small}

    # ----- the matrix
    def cell(self, loss: float, rtt_ms: int, impaired: bool) -> dict[str, Any]:
        size = bulk_size(loss, rtt_ms, self.args.target, self.args.most)
        result: dict[str, Any] = {"loss": loss, "rtt_ms": rtt_ms, "impairer": impaired,
                                  "bulk_size": size, "mathis_mb_s": mathis_mb_s(loss, rtt_ms),
                                  "load_before": load_average()}
        started = time.monotonic()
        with self.impaired(loss, rtt_ms) if impaired else contextlib.nullcontext():
            for path, measure in (("native", self.native), ("chromium", self.chromium),
                                  ("raw", self.raw_path)):
                try:
                    result[path] = summarize(measure(size), size)
                except Exception as exc:  # recorded, the matrix goes on
                    result[path] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                progress_line(loss, rtt_ms, impaired, path, result[path])
        result["seconds"] = round(time.monotonic() - started, 1)
        result["load_after"] = load_average()
        return result


class LossWorld:
    """BrowserWorld with the daemon's heartbeat settings at the product's defaults (the test
    config's 1 s / 5 s would end a viewer whose heartbeat waits behind a slow bulk body)."""

    def __new__(cls, log_dir: Path, backend: str) -> Any:
        from tests.browser.harness import BrowserWorld
        from tests.support.procs import daemon_config

        class World(BrowserWorld):
            def start_daemon(self) -> Any:
                config = daemon_config(self.config, state_dir=self.state_dir,
                                       signal_port=8787, services=self.services,
                                       backend=backend)
                text = re.sub(r"heartbeat_(interval|timeout) = .*\n", "", config.read_text())
                config.write_text(text.replace("read_timeout = 5.0", "read_timeout = 120.0"))
                proc = self.start("daemon", "-m", "peerproxyd", "serve", "--config", str(config))
                proc.wait_for_log("registered as")
                return proc

        return World(log_dir)


def summarize(raw: dict[str, Any], size: int) -> dict[str, Any]:
    from bench._measure import percentile

    bulk, small = raw["bulk"], raw["small"]
    done = bulk["bytes"] >= size
    out: dict[str, Any] = {
        "bulk_mb_s": bulk["bytes"] / bulk["seconds"] / 1e6 if bulk["bytes"] else None,
        "bulk_seconds": bulk["seconds"], "bulk_complete": done,
        "small_count": len(small), "samples_s": small,
    }
    if small:
        out["p50_ms"] = percentile(small, 0.5) * 1000
        out["p99_ms"] = percentile(small, 0.99) * 1000
        out["over_1s"] = sum(1 for s in small if s >= 1.0)
    return out


def progress_line(loss: float, rtt: int, impaired: bool, path: str, r: dict[str, Any]) -> None:
    head = f"{loss:.0%} loss {rtt} ms{'' if impaired else ' (no impairer)'} {path}:"
    if "error" in r:
        print(head, "ERROR", r["error"], flush=True)
        return
    mb = f"{r['bulk_mb_s']:.2f}" if r["bulk_mb_s"] else "-"
    print(f"{head} bulk {mb} MB/s{'' if r['bulk_complete'] else ' (cut)'}, 1 KB "
          f"p50 {r.get('p50_ms', 0):.1f} ms p99 {r.get('p99_ms', 0):.1f} ms "
          f"(n={r['small_count']})", flush=True)


# ----------------------------------------------------------------------------- outputs
def label(cell: dict[str, Any]) -> str:
    if not cell["impairer"]:
        return "0 % / 0 ms, no impairer"
    return f"{cell['loss']:.0%} / {cell['rtt_ms']} ms".replace("%", " %")


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    x, y = a.get(key), b.get(key)
    return x / y if x and y else None


def mathis(cell: dict[str, Any]) -> float | None:
    rate = mathis_mb_s(cell["loss"], cell["rtt_ms"])
    return None if math.isinf(rate) else rate


def over(path: dict[str, Any]) -> str:
    return f"{path['over_1s']} of {path['small_count']}" if "over_1s" in path else "–"


def table(data: dict[str, Any]) -> str:
    lines = [
        "| loss / RTT | bulk MB | Mathis MB/s | bulk MB/s native / Chromium / raw | "
        "proxied/raw native / Chromium | 1 KB p50 ms native / Chromium / raw | "
        "1 KB p99 ms native / Chromium / raw | 1 KB GETs >= 1 s native / Chromium / raw |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in data["cells"]:
        n, ch, r = (c.get(p, {}) for p in PATHS)
        cut = "".join("*" if x.get("bulk_complete") is False else "" for x in (n, ch, r))
        mb = " / ".join(fmt(x.get("bulk_mb_s"), ".2f") for x in (n, ch, r)) + cut
        lines.append(
            f"| {label(c)} | {c['bulk_size'] / 1e6:.2f} | {fmt(mathis(c), '.2f')} "
            f"| {mb} | {fmt(ratio(n, r, 'bulk_mb_s'), '.2f')} / "
            f"{fmt(ratio(ch, r, 'bulk_mb_s'), '.2f')} "
            f"| {' / '.join(fmt(x.get('p50_ms'), '.1f') for x in (n, ch, r))} "
            f"| {' / '.join(fmt(x.get('p99_ms'), '.0f') for x in (n, ch, r))} "
            f"| {' / '.join(over(x) for x in (n, ch, r))} |")
    return "\n".join(lines)


def load_runs(path: Path) -> dict[str, Any]:
    """{backend: {"meta", "cells"}} from the JSON (a single run's file counts as aiortc's)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {"aiortc": data} if "cells" in data else dict(data)


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(3, len(runs), figsize=(11 * len(runs), 10), sharex="col",
                             squeeze=False)
    for column, (backend, data) in enumerate(runs.items()):
        plot_run(data, backend, [row[column] for row in grid])
    fig.tight_layout()
    fig.savefig(path, dpi=80 if len(runs) > 1 else 90)


def plot_run(data: dict[str, Any], backend: str, axes: list[Any]) -> None:
    cells = data["cells"]
    names = [label(c).replace(", no impairer", "\n(no impairer)") for c in cells]
    colors = {"native": "tab:blue", "chromium": "tab:orange", "raw": "tab:gray"}
    width = 0.27
    for i, p in enumerate(PATHS):
        xs = [k + (i - 1) * width for k in range(len(cells))]
        for ax, key in zip(axes, ("bulk_mb_s", "p50_ms", "p99_ms")):
            ax.bar(xs, [c.get(p, {}).get(key) or 0 for c in cells], width=width,
                   color=colors[p], label=p)
    rates = [mathis(c) for c in cells]
    axes[0].scatter([k for k, m in enumerate(rates) if m], [m for m in rates if m], marker="_",
                    s=400, color="k", label=f"Mathis (MSS {MSS} B)", zorder=3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("bulk MB/s (log)")
    axes[1].set_ylabel("1 KB GET p50 ms")
    axes[2].set_ylabel("1 KB GET p99 ms")
    axes[2].axhline(1000, color="tab:red", linestyle="--", linewidth=1,
                    label="aiortc SCTP_RTO_MIN (1 s)")
    for ax in axes:
        ax.legend(fontsize=8)
    axes[2].set_xticks(range(len(cells)), names, fontsize=8)
    meta = data["meta"]
    axes[0].set_title(f"{backend} backend: loss each way / RTT (impair.py on NFQUEUE), "
                      f"{meta['date']}, load {meta['load_start'][0]:.1f}–"
                      f"{meta['load_end'][0]:.1f}{' (quick)' if meta['quick'] else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--target", type=float, help="seconds a bulk body should take")
    parser.add_argument("--most", type=int, help="largest bulk body (bytes)")
    parser.add_argument("--count", type=int, help="1 KB GETs per cell and path")
    parser.add_argument("--budget", type=float, help="seconds for the 1 KB GETs")
    parser.add_argument("--limit", type=float, help="seconds a single transfer may take")
    parser.add_argument("--backend", choices=("aiortc", "native"), default="aiortc",
                        help="the daemon's, the native client's and the raw peers' backend "
                        "(native: run with the Python 3.13 venv); the JSON keeps one run of each")
    parser.add_argument("--render", metavar="JSON", help="only redo the plot and table")
    args = parser.parse_args()
    if args.render:
        runs = load_runs(Path(args.render))
        plot(runs, BENCH / "loss.png")
        for backend, data in runs.items():
            print(f"{backend}:\n{table(data)}")
        return
    q = args.quick
    args.target = args.target or (3.0 if q else 8.0)
    args.most = args.most or (4_000_000 if q else 16_000_000)
    args.count = args.count or (30 if q else 200)
    args.budget = args.budget or (10.0 if q else 30.0)
    args.limit = args.limit or (30.0 if q else 60.0)
    from bench._measure import machine
    from tests.browser.harness import unavailable_reason

    if reason := unavailable_reason():
        sys.exit(f"cannot run: {reason}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    log_dir = BENCH / "results" / f"loss-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "date": stamp, "quick": q, "backend": args.backend, "load_start": load_average(),
        "settings": {k: getattr(args, k) for k in ("target", "most", "count", "budget", "limit")},
        "machine": machine(("aiortc", "aioice", "playwright"), chromium=True),
    }
    bench = Bench(log_dir, args)
    cells = []
    started = time.monotonic()
    try:
        bench.up()
        for loss, rtt, impaired in CELLS:
            cells.append(bench.cell(loss, rtt, impaired))
    finally:
        bench.down()
    meta["load_end"] = load_average()
    meta["seconds"] = round(time.monotonic() - started)
    data = {"meta": meta, "cells": cells}
    out = BENCH / "loss-latest.json"
    runs = {**load_runs(out), args.backend: data}
    out.write_text(json.dumps(runs, indent=1) + "\n")
    plot(runs, BENCH / "loss.png")
    print(table(data))
    print(f"wrote {out}, bench/loss.png ({meta['seconds']} s; logs in {log_dir})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        url, size, count, budget, limit = sys.argv[2:7]
        probe(url, int(size), int(count), float(budget), float(limit))
    elif sys.argv[1:2] == ["rawpeer"] and sys.argv[2:3] in (["offer"], ["answer"]):
        from bench._procs import rawpeer_as_daemon

        rawpeer_as_daemon(sys.argv[2])
    elif sys.argv[1:2] == ["rawpeer-native"] and sys.argv[2:3] in (["offer"], ["answer"]):
        from bench._procs import transport_rawpeer

        transport_rawpeer(sys.argv[2], "native")
    else:
        main()
