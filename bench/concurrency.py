"""Concurrent loads through the native client against the same loads direct (issue 15 target 2).

A page is many requests at once, and several viewers share one device. On the stack of
bench/_procs.py (upstream app, signaling server, daemon, `peerproxyd connect`; 127.0.0.1 only),
with two more viewers (their own `connect`, their own peer connection) for the fairness cases:

- burst 10 x 245 KB and burst 100 x 4 KB: one batch of concurrent GETs, wall time from the
  first request to the last body, direct (to the upstream) and proxied (one viewer);
- 3 viewers x 30 concurrent 64 KB GETs, all at once: p50 and p99 of the 90 latencies;
- one viewer's 1 KB GETs (sequential) alone, then while another viewer downloads in bulk:
  their p50 and p99.

Blocks interleave direct and proxied (the order alternating), so the shared machine's noise
hits both; figures are medians over the blocks. Every body's length is checked.

    python bench/concurrency.py [--blocks 8] [--quick]          # the daemon's default backend
    .venv313/bin/python bench/concurrency.py                      # native (libdatachannel)

Writes bench/results/concurrency-<backend>-<stamp>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench._measure import machine, percentile, progress  # noqa: E402
from bench._procs import ProxyStack  # noqa: E402

KB = 1000
BULK = 2_000_000_000  # bytes of the other viewer's download (cut when the 1 KB series ends)
TIMEOUT = aiohttp.ClientTimeout(total=120)


async def get(session: aiohttp.ClientSession, base: str, size: int) -> float:
    """One GET of `size` bytes; its latency in seconds (to the last byte)."""
    started = time.perf_counter()
    async with session.get(f"{base}/download?size={size}") as response:
        body = await response.read()
    if response.status != 200 or len(body) != size:
        raise RuntimeError(f"GET {size} B from {base}: {response.status}, {len(body)} bytes")
    return time.perf_counter() - started


async def burst(session: aiohttp.ClientSession, base: str, count: int, size: int) -> float:
    """`count` concurrent GETs of `size`: seconds from the first request to the last body."""
    started = time.perf_counter()
    await asyncio.gather(*(get(session, base, size) for _ in range(count)))
    return time.perf_counter() - started


async def series(session: aiohttp.ClientSession, base: str, count: int, size: int) -> list[float]:
    return [await get(session, base, size) for _ in range(count)]


async def bulk(session: aiohttp.ClientSession, base: str, stop: asyncio.Event) -> int:
    """Download from `base` until `stop`; the bytes read."""
    got = 0
    while not stop.is_set():
        async with session.get(f"{base}/download?size={BULK}") as response:
            async for chunk in response.content.iter_chunked(256 * 1024):
                got += len(chunk)
                if stop.is_set():
                    break
    return got


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=TIMEOUT,
                                 auto_decompress=False)


async def run(stack: ProxyStack, viewers: list[str], blocks: int, quick: bool) -> dict[str, Any]:
    direct = stack.upstream_url
    sessions = {url: session() for url in [direct, *viewers]}
    found: dict[str, Any] = {"burst": {}, "fairness": {}, "interference": {}}
    try:
        for count, size in ((10, 245 * KB), (100, 4 * KB)):
            name = f"{count} x {size // KB} KB"
            walls: dict[str, list[float]] = {"direct": [], "proxied": []}
            for block in range(blocks):
                order = [("direct", direct), ("proxied", viewers[0])]
                for path, base in order if block % 2 == 0 else order[::-1]:
                    walls[path].append(await burst(sessions[base], base, count, size))
            found["burst"][name] = walls
            progress(f"burst {name}: direct {statistics.median(walls['direct']) * 1000:.0f} ms, "
                     f"proxied {statistics.median(walls['proxied']) * 1000:.0f} ms")

        per_viewer = 30
        fair: dict[str, list[float]] = {"direct": [], "proxied": []}
        for block in range(blocks):
            for path in ("direct", "proxied") if block % 2 == 0 else ("proxied", "direct"):
                bases = [direct] * len(viewers) if path == "direct" else viewers
                results = await asyncio.gather(*(
                    get(sessions[base], base, 64 * KB) for base in bases for _ in range(per_viewer)))
                fair[path].extend(results)
        found["fairness"] = {"viewers": len(viewers), "per_viewer": per_viewer, "size": 64 * KB,
                             "latencies": fair}
        progress("fairness: proxied p50 {:.0f} ms, p99 {:.0f} ms".format(
            percentile(fair["proxied"], 0.5) * 1000, percentile(fair["proxied"], 0.99) * 1000))

        small = 100 if quick else 300
        quiet: list[float] = []
        loaded: list[float] = []
        moved = []
        for block in range(max(2, blocks // 2)):
            one, other = viewers[0], viewers[1]
            quiet.extend(await series(sessions[one], one, small // 2, KB))
            stop = asyncio.Event()
            downloading = asyncio.create_task(bulk(sessions[other], other, stop))
            await asyncio.sleep(0.5)  # the bulk transfer under way
            started = time.perf_counter()
            loaded.extend(await series(sessions[one], one, small // 2, KB))
            stop.set()
            got = await downloading
            moved.append(got / (time.perf_counter() - started + 0.5))
        found["interference"] = {"quiet": quiet, "loaded": loaded,
                                 "bulk_bytes_per_s": moved}
        progress("1 KB p50 {:.2f} ms alone, {:.2f} ms beside a bulk download".format(
            statistics.median(quiet) * 1000, statistics.median(loaded) * 1000))
    finally:
        for s in sessions.values():
            await s.close()
    return found


def summary(found: dict[str, Any]) -> list[dict[str, Any]]:
    """The target rows: figure, target, measured, met."""
    rows = []
    for name, walls in found["burst"].items():
        d, p = statistics.median(walls["direct"]), statistics.median(walls["proxied"])
        rows.append({"figure": f"{name} concurrent GETs, wall time", "target": "<= 2x direct",
                     "measured": f"{p * 1000:.0f} ms vs {d * 1000:.0f} ms direct ({p / d:.2f}x)",
                     "met": p <= 2 * d})
    fair = found["fairness"]["latencies"]["proxied"]
    p50, p99 = percentile(fair, 0.5), percentile(fair, 0.99)
    direct = found["fairness"]["latencies"]["direct"]
    rows.append({"figure": "3 viewers x 30 concurrent 64 KB GETs: p99 / p50",
                 "target": "p99 <= 2x p50",
                 "measured": f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms ({p99 / p50:.2f}x); "
                             f"direct p50 {percentile(direct, 0.5) * 1000:.0f} ms, "
                             f"p99 {percentile(direct, 0.99) * 1000:.0f} ms",
                 "met": p99 <= 2 * p50})
    inter = found["interference"]
    q, loaded = statistics.median(inter["quiet"]), statistics.median(inter["loaded"])
    rate = statistics.median(inter["bulk_bytes_per_s"]) / 1e6
    rows.append({"figure": "a viewer's 1 KB GET p50 beside another viewer's bulk download",
                 "target": "<= 2x alone",
                 "measured": f"{loaded * 1000:.2f} ms vs {q * 1000:.2f} ms alone ({loaded / q:.2f}x; "
                             f"p99 {percentile(inter['loaded'], 0.99) * 1000:.1f} vs "
                             f"{percentile(inter['quiet'], 0.99) * 1000:.1f} ms; bulk {rate:.1f} MB/s)",
                 "met": loaded <= 2 * q})
    return rows


def backend_of(stack: ProxyStack) -> str:
    match = re.search(r"backend (\w+)", stack.procs["daemon"].log())
    return match.group(1) if match else "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="4 blocks, shorter 1 KB series")
    args = parser.parse_args()
    blocks = 4 if args.quick else args.blocks
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_dir = Path(tempfile.mkdtemp(prefix="concurrency-"))
    stack = ProxyStack(log_dir)
    load = [os.getloadavg()[0]]
    try:
        stack.start()
        viewers = [stack.proxy_url, stack.add_viewer("second"), stack.add_viewer("third")]
        found = asyncio.run(run(stack, viewers, blocks, args.quick))
        backend = backend_of(stack)
    finally:
        stack.stop()
    load.append(os.getloadavg()[0])
    rows = summary(found)
    results = {"stamp": stamp, "backend": backend, "blocks": blocks, "load_average": load,
               "machine": machine(("aiortc", "aioice", "aiohttp", "libdatachannel-py")),
               "targets": rows, "raw": found}
    out = ROOT / "bench" / "results" / f"concurrency-{backend}-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"Run {stamp}, backend {backend}, {blocks} blocks, load average "
          f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores\n")
    print("| figure | target | measured (median of blocks) | verdict |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['figure']} | {row['target']} | {row['measured']} | "
              f"{'met' if row['met'] else '**missed**'} |")
    print(f"\nall: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
