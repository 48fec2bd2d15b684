"""Small requests before and after a change, side by side (issue 15: packed messages).

Two whole stacks (upstream, signaling server, daemon, `peerproxyd connect`; bench/_procs.py),
one running the code of `--before` and one that of `--after` (each process started with
`python -P` and PYTHONPATH set to its tree), plus the direct path to the upstream. Blocks of
sequential GETs of `--size` bytes (1 KB; keep-alive) go to direct, before and after in turn,
the order rotating from block to block, so the machine's noise hits all three alike.

    python bench/packed_ab.py                       # before /work/main, after this tree
    python bench/packed_ab.py --blocks 12 --count 150
    /work/main/.venv313/bin/python bench/packed_ab.py   # the native backend (Python >= 3.12)

The backend is the daemon's and the client's default ("auto"): aiortc on Python 3.11, the
native one where libdatachannel-py is installed. Per path it prints p50/p90 of all requests,
the median of the blocks' p50s, the added latency over direct, UDP datagrams per request
(/proc/net/snmp: the whole namespace) and the CPU of the daemon and `connect` per request.
The figures go to bench/results/packed-ab-<timestamp>.json, the logs next to it. With
`--profile`, py-spy (from the running Python's bin/) samples each daemon and `connect` while
the blocks run, and the inclusive share of a few functions is printed per process.
"""

from __future__ import annotations

import os
import sys

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _BENCH_DIR]
sys.path.insert(0, os.path.dirname(_BENCH_DIR))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402

from bench._measure import cpu_seconds, machine_busy, percentile, progress  # noqa: E402
from bench._procs import ROOT, ProxyStack  # noqa: E402
from bench.core import udp_datagrams  # noqa: E402
from tests.support.procs import Proc  # noqa: E402



# Inclusive shares reported with --profile: (label, function, the end of its file's path).
WATCHED = (
    ("channel send (native)", "send", "peerproxyd/rtc/transport_native.py"),
    ("channel send (aiortc)", "send", "aiortc/rtcdatachannel.py"),
    ("SCTP send chunk (aiortc)", "_send_chunk", "aiortc/rtcsctptransport.py"),
    ("SCTP receive (aiortc)", "_receive", "aiortc/rtcsctptransport.py"),
    ("DTLS write (aiortc)", "_write_ssl", "aiortc/rtcdtlstransport.py"),
    ("ChannelLink send", "send_queued", "peerproxyd/tunnel/channel.py"),
    ("ChannelLink flush", "flush", "peerproxyd/tunnel/channel.py"),
    ("ChannelLink receive", "_on_message", "peerproxyd/tunnel/channel.py"),
    ("protocol receive", "receive_message", "peerproxyd/protocol/connection.py"),
    ("split_message", "split_message", "peerproxyd/protocol/frames.py"),
    ("pack_messages", "pack_messages", "peerproxyd/protocol/frames.py"),
    ("Router.handle", "handle", "peerproxyd/device/router.py"),
)


def inclusive(raw: Path) -> dict[str, float]:
    """% of samples whose stack holds each WATCHED function (py-spy's raw format)."""
    counts = dict.fromkeys((label for label, _, _ in WATCHED), 0)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        frames = [frame.partition(" (") for frame in stack.split(";")]
        for label, function, path in WATCHED:
            if any(f.rpartition(".")[2] == function and where.partition(":")[0].endswith(path)
                   for f, _, where in frames):
                counts[label] += int(count)
    return {label: round(100 * n / max(total, 1), 1) for label, n in counts.items() if n}


class TreeStack(ProxyStack):
    """A ProxyStack whose processes run the code of `tree`."""

    def __init__(self, log_dir: Path, tree: Path) -> None:
        super().__init__(log_dir)
        self.tree = tree

    def _start(self, name: str, args: list[str]) -> Proc:
        proc = Proc(name, [args[0], "-P", *args[1:]], self.log_dir,
                    env={"PYTHONPATH": str(self.tree)})
        self.procs[name] = proc
        return proc


async def series(http: aiohttp.ClientSession, url: str, count: int, size: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with http.get(f"{url}/download?size={size}") as response:
            body = await response.read()
        times.append(time.perf_counter() - started)
        assert response.status == 200 and len(body) == size
    return times


async def measure(urls: dict[str, str], stacks: dict[str, TreeStack], blocks: int,
                  count: int, size: int) -> dict[str, Any]:
    names = list(urls)
    results: dict[str, dict[str, Any]] = {
        n: {"latencies": [], "block_p50": [], "datagrams": 0, "cpu": {}} for n in names
    }
    busy = []
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        for url in urls.values():  # warm up: connections, first requests
            await series(http, url, 20, size)
        for block in range(blocks):
            order = names[block % len(names):] + names[: block % len(names)]
            for name in order:
                pids = stacks[name].pids() if name in stacks else {}
                cpu = {p: cpu_seconds(pid) for p, pid in pids.items()}
                dgrams, machine = udp_datagrams(), machine_busy()
                started = time.perf_counter()
                times = await series(http, urls[name], count, size)
                elapsed = time.perf_counter() - started
                result = results[name]
                result["datagrams"] += udp_datagrams() - dgrams
                for p, pid in pids.items():
                    result["cpu"][p] = result["cpu"].get(p, 0.0) + cpu_seconds(pid) - cpu[p]
                busy.append((machine_busy() - machine) / elapsed)
                result["latencies"] += times
                result["block_p50"].append(statistics.median(times))
            progress(f"block {block + 1}/{blocks}: " + ", ".join(
                f"{n} {results[n]['block_p50'][-1] * 1000:.2f} ms" for n in names))
    n = blocks * count
    summary: dict[str, Any] = {"cores_busy_median": statistics.median(busy)}
    for name, r in results.items():
        summary[name] = {
            "p50_ms": percentile(r["latencies"], 0.5) * 1000,
            "p90_ms": percentile(r["latencies"], 0.9) * 1000,
            "block_p50_median_ms": statistics.median(r["block_p50"]) * 1000,
            "block_p50_ms": [t * 1000 for t in r["block_p50"]],
            "udp_datagrams_per_request": r["datagrams"] / n,
            "cpu_ms_per_request": {p: s * 1000 / n for p, s in r["cpu"].items()
                                   if p in ("daemon", "connect")},
        }
    direct = summary["direct"]["block_p50_median_ms"]
    for name in names[1:]:
        added = [b - d for b, d in zip(summary[name]["block_p50_ms"],
                                       summary["direct"]["block_p50_ms"], strict=True)]
        summary[name]["added_ms"] = summary[name]["block_p50_median_ms"] - direct
        summary[name]["added_per_block_ms"] = added
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, default=Path("/work/main"))
    parser.add_argument("--after", type=Path, default=ROOT)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024, help="response body bytes (1024)")
    parser.add_argument("--profile", action="store_true", help="py-spy the daemons and clients")
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"packed-ab-{stamp}"
    stacks: dict[str, TreeStack] = {}
    try:
        for name, tree in (("before", args.before), ("after", args.after)):
            (out / name).mkdir(parents=True)
            stacks[name] = TreeStack(out / name, tree.resolve())
            stacks[name].start()
            backend = stacks[name].procs["daemon"].wait_for_log(r"WebRTC backend: (\w+)").group(1)
            progress(f"{name}: {tree}, backend {backend}")
        urls = {"direct": stacks["after"].upstream_url,
                "before": stacks["before"].proxy_url, "after": stacks["after"].proxy_url}
        spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        if args.profile:
            pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
            for name, stack in stacks.items():
                for proc in ("daemon", "connect"):
                    raw = out / f"{name}-{proc}.txt"
                    spies[f"{name} {proc}"] = (subprocess.Popen(
                        [pyspy, "record", "-r", "200", "-f", "raw", "-o", str(raw), "--pid",
                         str(stack.procs[proc].pid)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL), raw)
            time.sleep(2)
        summary = asyncio.run(measure(urls, stacks, args.blocks, args.count, args.size))
        for spy, _ in spies.values():
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        summary["profile"] = {k: inclusive(raw) for k, (_, raw) in spies.items() if raw.exists()}
    finally:
        for stack in stacks.values():
            stack.stop()
    summary |= {"backend": backend, "python": sys.version.split()[0], "blocks": args.blocks,
                "count": args.count, "size": args.size, "before_tree": str(args.before),
                "after_tree": str(args.after)}
    (out.parent / f"packed-ab-{stamp}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"backend {backend}, Python {summary['python']}, {args.blocks} blocks x {args.count}"
          f" GETs of {args.size} B; the machine: {summary['cores_busy_median']:.2f} of"
          f" {os.cpu_count()} cores busy (median; these processes included)")
    print("| path | p50 ms (all) | p90 ms | median of block p50s | added | UDP dgrams/req |"
          " CPU ms/req daemon + connect |")
    print("|---|---|---|---|---|---|---|")
    for name in ("direct", "before", "after"):
        s = summary[name]
        cpu = s["cpu_ms_per_request"]
        print(f"| {name} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['block_p50_median_ms']:.2f} |"
              f" {'+%.2f' % s['added_ms'] if 'added_ms' in s else '-'} |"
              f" {s['udp_datagrams_per_request']:.1f} |"
              f" {' + '.join(f'{cpu[p]:.2f}' for p in ('daemon', 'connect') if p in cpu) or '-'} |")
    for process, shares in summary.get("profile", {}).items():
        print(f"{process} (py-spy, inclusive % of samples): "
              + ", ".join(f"{label} {share}" for label, share in shares.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
