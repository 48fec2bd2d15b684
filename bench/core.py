"""Core benchmark: MB/s and request latency on loopback for three paths, in one run.

    (a) direct  HTTP GET to the upstream app (aiohttp client -> aiohttp server)
    (b) raw     two bare aiortc peers in two processes, 16 KiB messages, bufferedAmount
                backpressure, uvloop; a 1-byte request answered with `size` bytes
                (size 1: a 1-byte ping-pong)
    (c) proxy   HTTP GET through `peerproxyd connect` -> data channel -> daemon -> upstream

Each run measures every size on every path, the paths interleaved (their order rotates from
run to run) so noise hits all three alike; the figures are min / median across runs.

    python bench/core.py           # full, a few minutes: bench/core-latest.json, bench/core.png
    python bench/core.py --quick   # < 1 minute; writes only under bench/results/
    python bench/core.py --runs 5

Sizes are binary (1 KB = 1024 B); MB/s means 10^6 bytes per second. Results, with every
per-run figure, go to bench/results/core-<timestamp>.json (gitignored), the logs of every
process to bench/results/core-<timestamp>/.
"""

from __future__ import annotations

import os
import sys

# `python bench/core.py` puts bench/ first on sys.path: replace it with the repository root,
# so the helpers import as `bench._procs` and no bench script can shadow a stdlib module.
_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _BENCH_DIR]
sys.path.insert(0, os.path.dirname(_BENCH_DIR))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402

from bench._measure import (  # noqa: E402
    cpu_seconds,
    machine,
    machine_busy,
    percentile,
    progress,
)
from bench._procs import ROOT, ProxyStack, RawPair  # noqa: E402

BENCH = ROOT / "bench"
KB = 1024
MB = 1024 * 1024
PATHS = ("a", "b", "c")
PATH_NAMES = {
    "a": "direct HTTP",
    "b": "raw aiortc data channel",
    "c": "peerproxyd connect -> daemon",
}
ORDERS = ("abc", "bca", "cab")
LATENCY_TARGET_MS = 1.0  # (c) may add at most this to a 1 KB request over (a)
BULK_TARGET = 0.90  # (c) reaches at least this fraction of (b) on bulk
TIMEOUT = 300.0  # seconds for one series of requests


@dataclass(frozen=True)
class Size:
    bytes: int
    label: str
    count: int  # sequential requests per run and path
    budget: float  # seconds; a series stops early past this (after at least one request)


FULL = (
    Size(1, "1 B", 200, 20),
    Size(KB, "1 KB", 200, 20),
    Size(16 * KB, "16 KB", 200, 20),
    Size(256 * KB, "256 KB", 40, 20),
    Size(10 * MB, "10 MB", 3, 20),
    Size(100 * MB, "100 MB", 1, 60),
)
QUICK = (
    Size(1, "1 B", 50, 5),
    Size(KB, "1 KB", 50, 5),
    Size(16 * KB, "16 KB", 50, 5),
    Size(256 * KB, "256 KB", 10, 5),
    Size(10 * MB, "10 MB", 1, 10),
)


# ----------------------------------------------------------------------------- measuring
async def http_get(session: aiohttp.ClientSession, url: str, size: int) -> float:
    """Seconds from sending a GET to having read its whole body."""
    t0 = time.perf_counter()
    async with session.get(url) as response:
        n = 0
        async for chunk in response.content.iter_any():
            n += len(chunk)
        elapsed = time.perf_counter() - t0
    if response.status != 200 or n != size:
        raise RuntimeError(f"GET {url}: status {response.status}, {n} of {size} bytes")
    return elapsed


async def http_series(session: aiohttp.ClientSession, base: str, size: Size) -> list[float]:
    url = f"{base}/download?size={size.bytes}"
    latencies: list[float] = []
    began = time.perf_counter()
    async with asyncio.timeout(TIMEOUT):
        for _ in range(size.count):
            latencies.append(await http_get(session, url, size.bytes))
            if time.perf_counter() - began > size.budget:
                break
    return latencies


def udp_datagrams() -> int:
    """UDP datagrams received in this network namespace (all processes)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    udp = [line for line in lines if line[0] == "Udp:"]
    return int(dict(zip(udp[0][1:], udp[1][1:]))["InDatagrams"])


def cpu_probe_ms() -> float:
    """Time of a fixed pure-Python loop: shows when the machine (or its host) is slow."""
    t0 = time.perf_counter()
    sum(i * i for i in range(100_000))
    return (time.perf_counter() - t0) * 1000


def across_runs(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values)}


# ----------------------------------------------------------------------------- the run
class Bench:
    def __init__(self, sizes: tuple[Size, ...], runs: int, log_dir: Path, *, raw_burst: bool):
        self.sizes = sizes
        self.runs = runs
        self.stack = ProxyStack(log_dir)
        self.raw = RawPair(log_dir, burst=raw_burst)
        self.http: aiohttp.ClientSession | None = None
        # path -> size -> one summary per run
        self.per_run: dict[str, dict[int, list[dict[str, Any]]]] = {
            p: {s.bytes: [] for s in sizes} for p in PATHS
        }
        self.other_load: list[float] = []  # cores busy with other processes, per series

    def _pids(self, path: str) -> dict[str, int]:
        """The processes that do the work of a path."""
        stack = self.stack.pids()
        me = {"bench": os.getpid()}
        if path == "a":
            return {**me, "upstream": stack["upstream"]}
        if path == "b":
            return self.raw.pids()
        return {**me, **{k: stack[k] for k in ("connect", "daemon", "upstream")}}

    def _all_pids(self) -> list[int]:
        return [os.getpid(), *self.stack.pids().values(), *self.raw.pids().values()]

    async def _series(self, path: str, size: Size) -> list[float]:
        if path == "a":
            assert self.http is not None
            return await http_series(self.http, self.stack.upstream_url, size)
        if path == "b":
            return await self.raw.get(size.bytes, size.count, size.budget, TIMEOUT)
        assert self.http is not None
        return await http_series(self.http, self.stack.proxy_url, size)

    async def _one(self, path: str, size: Size) -> dict[str, Any]:
        """One series; its latency, throughput, CPU per request and datagrams per request."""
        probe = cpu_probe_ms()
        pids = self._pids(path)
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        ours = sum(map(cpu_seconds, self._all_pids()))
        busy, datagrams = machine_busy(), udp_datagrams()
        t0 = time.perf_counter()
        latencies = await self._series(path, size)
        wall = time.perf_counter() - t0
        datagrams = udp_datagrams() - datagrams
        ours = sum(map(cpu_seconds, self._all_pids())) - ours
        other = max(0.0, machine_busy() - busy - ours) / wall
        if wall > 0.5:  # /proc counts CPU in 10 ms ticks: too coarse for shorter series
            self.other_load.append(other)
        n = len(latencies)
        spent = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        return {
            "n": n,
            "p50_ms": percentile(latencies, 0.50) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "mb_s": size.bytes * n / sum(latencies) / 1e6,
            "cpu_ms_per_request": {name: s * 1000 / n for name, s in spent.items()},
            "cpu_cores": {name: s / wall for name, s in spent.items()},
            "udp_datagrams_per_request": datagrams / n,
            "other_processes_cores": other,
            "cpu_probe_ms": probe,
        }

    async def run(self) -> None:
        progress("starting upstream, signaling, daemon, connect and two bare aiortc peers")
        await asyncio.to_thread(self.stack.start)
        await self.raw.start()
        progress(f"channels open: (b) {self.raw.setup_ms:.0f} ms, (c) {self.stack.setup_ms:.0f} ms")
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as self.http:
            progress("warm-up")
            for path in PATHS:
                await self._one(path, Size(KB, "warm", 20, 5))
                await self._one(path, Size(MB, "warm", 2, 5))
            for run in range(self.runs):
                for size in self.sizes:
                    for path in ORDERS[run % len(ORDERS)]:
                        result = await self._one(path, size)
                        self.per_run[path][size.bytes].append(result)
                        progress(
                            f"run {run + 1}/{self.runs} {size.label:>6} ({path}) "
                            f"n={result['n']:<3} p50 {result['p50_ms']:9.3f} ms "
                            f"{result['mb_s']:8.2f} MB/s"
                        )

    async def stop(self) -> None:
        await self.raw.stop()
        await asyncio.to_thread(self.stack.stop)

    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path in PATHS:
            out[path] = {}
            for size in self.sizes:
                runs = self.per_run[path][size.bytes]
                if not runs:
                    continue
                names = runs[0]["cpu_ms_per_request"]

                def median_of(key: str, runs: list[dict[str, Any]] = runs) -> dict[str, float]:
                    return {k: statistics.median(r[key][k] for r in runs) for k in names}

                out[path][str(size.bytes)] = {
                    "label": size.label,
                    **{k: across_runs([r[k] for r in runs]) for k in ("p50_ms", "p99_ms", "mb_s")},
                    "median_cpu_ms_per_request": median_of("cpu_ms_per_request"),
                    "median_cpu_cores": median_of("cpu_cores"),
                    "median_udp_datagrams_per_request": statistics.median(
                        r["udp_datagrams_per_request"] for r in runs
                    ),
                    "per_run": runs,
                }
        return out

    def other_load_summary(self) -> dict[str, Any]:
        """How busy the machine was with other processes while we measured (in cores)."""
        if not self.other_load:
            return {"series": 0}
        probes = [r["cpu_probe_ms"] for p in self.per_run.values() for s in p.values() for r in s]
        return {
            "series": len(self.other_load),
            "median_cores": statistics.median(self.other_load),
            "max_cores": max(self.other_load),
            "cpu_probe_ms": {
                "min": min(probes),
                "median": statistics.median(probes),
                "max": max(probes),
            },
        }


# ----------------------------------------------------------------------------- reporting
def targets(results: dict[str, Any], sizes: tuple[Size, ...]) -> dict[str, Any]:
    largest = str(sizes[-1].bytes)
    b_bulk = results["b"][largest]["mb_s"]["median"]
    c_bulk = results["c"][largest]["mb_s"]["median"]
    a_1k = results["a"][str(KB)]["p50_ms"]["median"]
    c_1k = results["c"][str(KB)]["p50_ms"]["median"]

    def per_run(path: str, size: str, key: str) -> list[float]:
        return [r[key] for r in results[path][size]["per_run"]]

    # Within a run the paths were measured back to back, so per-run comparisons share the noise.
    ratios = [c / b for b, c in zip(per_run("b", largest, "mb_s"), per_run("c", largest, "mb_s"))]
    small = str(KB)
    added = [c - a for a, c in zip(per_run("a", small, "p50_ms"), per_run("c", small, "p50_ms"))]
    return {
        "bulk": {
            "size": sizes[-1].label,
            "b_mb_s": b_bulk,
            "c_mb_s": c_bulk,
            "ratio": c_bulk / b_bulk,
            "ratio_per_run": ratios,
            "target": BULK_TARGET,
            "met": c_bulk / b_bulk >= BULK_TARGET,
        },
        "added_latency_1kb": {
            "a_p50_ms": a_1k,
            "c_p50_ms": c_1k,
            "added_ms": c_1k - a_1k,
            "added_ms_per_run": added,
            "target_ms": LATENCY_TARGET_MS,
            "met": c_1k - a_1k <= LATENCY_TARGET_MS,
        },
    }


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(results: dict[str, Any], sizes: tuple[Size, ...]) -> str:
    lines = [
        "| size | path | n/run | p50 ms | p99 ms | MB/s |",
        "|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for path in PATHS:
            r = results[path].get(str(size.bytes))
            if r is None:
                continue
            n = statistics.median(x["n"] for x in r["per_run"])
            cells = [
                f"{fmt(r[k]['min'])} / {fmt(r[k]['median'])}" for k in ("p50_ms", "p99_ms", "mb_s")
            ]
            name = f"({path}) {PATH_NAMES[path]}"
            lines.append(f"| {size.label} | {name} | {n:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(t: dict[str, Any]) -> str:
    bulk, lat = t["bulk"], t["added_latency_1kb"]
    return "\n".join(
        [
            f"- bulk ({bulk['size']}): (c) {fmt(bulk['c_mb_s'])} MB/s = {bulk['ratio'] * 100:.0f} %"
            f" of (b) {fmt(bulk['b_mb_s'])} MB/s (per run: "
            + ", ".join(f"{r * 100:.0f} %" for r in bulk["ratio_per_run"])
            + f"); target >= {bulk['target'] * 100:.0f} %: "
            + ("met" if bulk["met"] else "MISSED"),
            f"- 1 KB request: (c) p50 {fmt(lat['c_p50_ms'])} ms - (a) p50 {fmt(lat['a_p50_ms'])}"
            f" ms = +{lat['added_ms']:.2f} ms (per run: "
            + ", ".join(f"+{x:.2f}" for x in lat["added_ms_per_run"])
            + f"); target <= +{lat['target_ms']:.0f} ms: "
            + ("met" if lat["met"] else "MISSED"),
        ]
    )


def cost_lines(results: dict[str, Any], sizes: tuple[Size, ...]) -> str:
    """Where the work goes: CPU per request at 1 KB, CPU cores during the largest size."""
    lines = []
    for path in PATHS:
        small = results[path][str(KB)]
        cpu = ", ".join(f"{k} {v:.3f}" for k, v in small["median_cpu_ms_per_request"].items())
        dgrams = small["median_udp_datagrams_per_request"]
        lines.append(f"- 1 KB ({path}): CPU ms per request: {cpu}; UDP datagrams {dgrams:.1f}")
    for path in PATHS:
        big = results[path][str(sizes[-1].bytes)]
        cores = ", ".join(f"{k} {v:.2f}" for k, v in big["median_cpu_cores"].items())
        lines.append(f"- {sizes[-1].label} ({path}): CPU cores busy: {cores}")
    return "\n".join(lines)


def plot(results: dict[str, Any], sizes: tuple[Size, ...], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"a": ("tab:green", "o"), "b": ("tab:blue", "s"), "c": ("tab:red", "^")}
    small = [s for s in sizes if s.bytes <= 256 * KB]
    for p in PATHS:
        color, marker = styles[p]
        label = f"({p}) {PATH_NAMES[p]}"
        xs = [s.bytes for s in sizes if str(s.bytes) in results[p]]
        median = [results[p][str(x)]["mb_s"]["median"] for x in xs]
        low = [results[p][str(x)]["mb_s"]["min"] for x in xs]
        left.plot(xs, median, marker=marker, color=color, label=label)
        left.fill_between(xs, low, median, color=color, alpha=0.2)
        xs = [s.bytes for s in small if str(s.bytes) in results[p]]
        p50 = [results[p][str(x)]["p50_ms"]["median"] for x in xs]
        right.plot(xs, p50, marker=marker, color=color, label=label)
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        axis.grid(True, which="both", alpha=0.3)
        axis.set_xlabel("response size")
    left.set_xticks([s.bytes for s in sizes], [s.label for s in sizes])
    right.set_xticks([s.bytes for s in small], [s.label for s in small])
    left.minorticks_off()
    right.minorticks_off()
    left.set_ylabel("MB/s (line: median of runs; band down to min)")
    left.set_title("throughput")
    right.set_ylabel("p50 latency, ms (median of runs)")
    right.set_title("request latency, small sizes")
    left.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
async def main_async(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"core{'-quick' if args.quick else ''}-{stamp}"
    results_dir = BENCH / "results"
    log_dir = results_dir / name
    log_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(sizes, args.runs, log_dir, raw_burst=args.raw_burst)
    began = time.perf_counter()
    loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
    try:
        await bench.run()
    finally:
        await bench.stop()
    results = bench.results()
    report = {
        "timestamp": stamp,
        "mode": "quick" if args.quick else "full",
        "runs": args.runs,
        "raw_sender": "burst" if args.raw_burst else "yield after each message",
        "duration_s": time.perf_counter() - began,
        "machine": machine(
            ("aiortc", "aioice", "aiohttp", "uvloop", "pyOpenSSL", "cryptography"),
            watched=("peerproxyd", "tests/support"),
        ),
        "units": {"size": "bytes (1 KB = 1024 B)", "mb_s": "10^6 bytes per second"},
        "sizes": [
            {"bytes": s.bytes, "label": s.label, "count": s.count, "budget_s": s.budget}
            for s in sizes
        ],
        "paths": PATH_NAMES,
        "setup_ms": {"b": bench.raw.setup_ms, "c": bench.stack.setup_ms},
        "results": results,
        "other_load": bench.other_load_summary(),
        "loadavg": {
            "before": loadavg_before,
            "after": Path("/proc/loadavg").read_text().split()[:3],
        },
        "targets": targets(results, sizes),
    }
    text = json.dumps(report, indent=1) + "\n"
    outputs = [results_dir / f"{name}.json"]
    outputs[0].write_text(text)
    png = results_dir / f"{name}.png"
    if not args.quick:
        (BENCH / "core-latest.json").write_text(text)
        outputs.append(BENCH / "core-latest.json")
        png = BENCH / "core.png"
    m = report["machine"]
    plot(
        results, sizes, png,
        f"peerproxyd bench/core.py {stamp}: {m['nproc']} x {m['cpu_model']}, "
        f"Python {m['python']}, aiortc {m['versions']['aiortc']}, {args.runs} runs, loopback",
    )
    outputs.append(png)

    print(f"\nmin / median of {args.runs} runs; (b) sender: {report['raw_sender']}\n")
    print(table(results, sizes))
    print(
        f"\n(b) 1-byte round trip p50: {fmt(results['b']['1']['p50_ms']['median'])} ms; "
        f"data channel setup (b) {bench.raw.setup_ms:.0f} ms, (c) {bench.stack.setup_ms:.0f} ms"
    )
    print("\nCosts (medians of runs):\n" + cost_lines(results, sizes))
    other = report["other_load"]
    if other["series"]:
        noisy = other["max_cores"] > 0.25
        print(
            f"\nOther processes on this machine while measuring: median "
            f"{other['median_cores']:.2f}, max {other['max_cores']:.2f} cores of {m['nproc']}"
            + ("  <- NOISY: treat these figures with care" if noisy else "")
        )
        probe = other["cpu_probe_ms"]
        print(
            f"CPU probe (fixed Python loop) min / median / max: {probe['min']:.1f} / "
            f"{probe['median']:.1f} / {probe['max']:.1f} ms"
        )
    print("\nTargets:\n" + target_lines(report["targets"]))
    written = ", ".join(str(o.relative_to(ROOT)) for o in outputs)
    print(f"\nwrote {written} in {report['duration_s']:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and counts (< 1 min)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take min / median over (3)")
    parser.add_argument(
        "--raw-burst",
        action="store_true",
        help="(b) queues up to the high-water mark without yielding (slower; see README)",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args))
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
