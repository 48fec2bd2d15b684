"""Browser benchmark: the thesis's method, measured in headless Chromium.

Everything runs in a network namespace made for the run (loopback only, recipe A of
chromium-webrtc.md), with the same processes as tests/test_browser.py: the test app, the
signaling server, the daemon and Chromium driven over Playwright (tests/browser/harness.py).

    proxied  the app in the viewer's frame, http://<device id>--camera.localhost:8787/ : every
             request goes service worker -> page -> data channel -> daemon -> app
    direct   the same app opened at http://127.0.0.1:8081/ in the same browser

Measured in the page with performance.now() around fetch() + reading the whole body:

- sequential downloads 0 .. 5 MiB in 50 KiB steps (`--runs` each; 5 by default):
  throughput = 1 / slope of the least-squares line time(size), base latency = its intercept;
- sequential uploads likewise (POST of a Uint8Array to /api/sink, which hashes it);
- concurrent requests: 10 GETs at once of 1 B, 1 KB, 4 KB, 15 KB, 62 KB, 245 KB; the
  latency of each request (median and 90th percentile over all of them);
- connection setup: navigation start of the viewer page -> data channel open, 10 runs,
  cold (a fresh browser profile: worker installed too) and warm (a reload).

    python bench/browser.py            # full: about 10 minutes
    python bench/browser.py --quick    # about 2 minutes (500 KiB steps, 2 runs)

Writes bench/browser.md (table, for bench/README.md), bench/browser.png and
bench/results/browser-<timestamp>.json (with every sample). Sizes are binary
(1 KiB = 1024 B); MB/s is 10^6 bytes per second. Needs root (ip netns).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Not bench/ itself on the path: its signal.py would shadow the standard library's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench._measure import percentile  # noqa: E402
from tests.browser.harness import APP_PORT, BrowserWorld, unavailable_reason  # noqa: E402

BENCH = ROOT / "bench"
KIB = 1024
MIB = 1024 * 1024
THESIS = {"download": 2.60, "upload": 2.97, "latency_ms": 79.0, "setup_ms": 482.8}
CONCURRENT_SIZES = [(1, "1 B"), (KIB, "1 KB"), (4 * KIB, "4 KB"), (15 * KIB, "15 KB"),
                    (62 * KIB, "62 KB"), (245 * KIB, "245 KB")]
CONCURRENCY = 10

SEQUENTIAL_JS = """async ({kind, size, runs}) => {
    const out = [];
    const body = kind === 'upload' ? new Uint8Array(size) : null;
    for (let i = 0; i < runs; i++) {
        const t = performance.now();
        const r = kind === 'upload'
            ? await fetch('/api/sink', {method: 'POST', body})
            : await fetch('/download?size=' + size);
        const got = await r.arrayBuffer();
        out.push(performance.now() - t);
        if (!r.ok || (kind === 'download' && got.byteLength !== size)) throw new Error('bad answer ' + r.status);
    }
    return out;
}"""

CONCURRENT_JS = """async ({size, count}) => {
    const one = async () => {
        const t = performance.now();
        const r = await fetch('/download?size=' + size + '&n=' + Math.random());
        await r.arrayBuffer();
        return performance.now() - t;
    };
    return Promise.all(Array.from({length: count}, one));
}"""


def linear_fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(slope ms per byte, intercept ms) of the least-squares line."""
    xs = [float(x) for x, _ in points]
    ys = [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def mb_per_s(slope_ms_per_byte: float) -> float:
    return 1.0 / slope_ms_per_byte * 1000 / 1e6


class Bench:
    def __init__(self, world: BrowserWorld, sizes: list[int], runs: int, setup_runs: int) -> None:
        self.world = world
        self.sizes = sizes
        self.runs = runs
        self.setup_runs = setup_runs

    def series(self, target: Any, kind: str) -> list[tuple[int, float]]:
        points = []
        for size in self.sizes:
            for ms in target.evaluate(SEQUENTIAL_JS, {"kind": kind, "size": size, "runs": self.runs}):
                points.append((size, ms))
        return points

    def concurrent(self, target: Any) -> dict[str, list[float]]:
        out = {}
        for size, label in CONCURRENT_SIZES:
            samples: list[float] = []
            for _ in range(self.runs):
                samples += target.evaluate(CONCURRENT_JS, {"size": size, "count": CONCURRENCY})
            out[label] = samples
        return out

    def setup(self) -> dict[str, list[float]]:
        world, agent = self.world, self.world.agent
        assert agent is not None
        cold, warm = [], []
        for _ in range(self.setup_runs):
            world.open("/")
            cold.append(agent.page.evaluate("window.__peerproxy.channelOpenAt"))
            agent.page.reload()
            world.wait_phase("connected")
            warm.append(agent.page.evaluate("window.__peerproxy.channelOpenAt"))
        return {"cold": cold, "warm": warm}

    def run(self) -> dict[str, Any]:
        world, agent = self.world, self.world.agent
        assert agent is not None
        results: dict[str, Any] = {"proxied": {}, "direct": {}}
        world.open("/")
        agent.app.evaluate(SEQUENTIAL_JS, {"kind": "download", "size": MIB, "runs": 2})  # warm-up
        answered = world.answered()
        print("proxied: downloads", flush=True)
        results["proxied"]["download"] = self.series(agent.app, "download")
        print("proxied: uploads", flush=True)
        results["proxied"]["upload"] = self.series(agent.app, "upload")
        print("proxied: concurrent", flush=True)
        results["proxied"]["concurrent"] = self.concurrent(agent.app)
        results["proxied"]["peer_connections"] = world.answered() - answered + 1
        agent.page.goto(f"http://127.0.0.1:{APP_PORT}/")
        agent.page.evaluate(SEQUENTIAL_JS, {"kind": "download", "size": MIB, "runs": 2})
        print("direct: downloads, uploads, concurrent", flush=True)
        results["direct"]["download"] = self.series(agent.page, "download")
        results["direct"]["upload"] = self.series(agent.page, "upload")
        results["direct"]["concurrent"] = self.concurrent(agent.page)
        print("setup", flush=True)
        results["setup_ms"] = self.setup()
        return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for path in ("proxied", "direct"):
        s: dict[str, Any] = {}
        for kind in ("download", "upload"):
            slope, intercept = linear_fit(results[path][kind])
            zero = [ms for size, ms in results[path][kind] if size == 0]
            s[kind] = {"mb_per_s": mb_per_s(slope), "base_latency_ms": intercept,
                       "empty_median_ms": statistics.median(zero)}
        s["concurrent"] = {
            label: {"median_ms": statistics.median(v), "p90_ms": percentile(v, 0.9)}
            for label, v in results[path]["concurrent"].items()
        }
        summary[path] = s
    setup = results["setup_ms"]
    summary["setup"] = {
        k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)}
        for k, v in setup.items()
    }
    return summary


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    p, d = summary["proxied"], summary["direct"]
    lines = [
        "## Browser (headless Chromium): bench/browser.py",
        "",
        f"{meta['date']}, {meta['machine']}; Chromium {meta['chromium']}; loopback in a network "
        f"namespace; downloads/uploads 0–{meta['max_size'] // MIB} MiB in "
        f"{meta['step'] // KIB} KiB steps, {meta['runs']} runs each; MB/s = 10^6 B/s.",
        "Throughput = 1/slope and base latency = intercept of the least-squares line of time "
        "against size (the thesis's method).",
        "",
        "| | peerproxyd (browser) | direct HTTP, same browser | thesis |",
        "|---|---|---|---|",
        f"| download | {p['download']['mb_per_s']:.2f} MB/s | {d['download']['mb_per_s']:.1f} MB/s "
        f"| {THESIS['download']:.2f} MB/s |",
        f"| upload | {p['upload']['mb_per_s']:.2f} MB/s | {d['upload']['mb_per_s']:.1f} MB/s "
        f"| {THESIS['upload']:.2f} MB/s |",
        f"| base latency (download intercept) | {p['download']['base_latency_ms']:.1f} ms "
        f"| {d['download']['base_latency_ms']:.1f} ms | {THESIS['latency_ms']:.0f} ms |",
        f"| base latency (upload intercept) | {p['upload']['base_latency_ms']:.1f} ms "
        f"| {d['upload']['base_latency_ms']:.1f} ms | |",
        f"| empty GET, measured (median) | {p['download']['empty_median_ms']:.1f} ms "
        f"| {d['download']['empty_median_ms']:.1f} ms | |",
        f"| empty POST, measured (median) | {p['upload']['empty_median_ms']:.1f} ms "
        f"| {d['upload']['empty_median_ms']:.1f} ms | |",
        f"| setup, page open → channel open (median of {meta['setup_runs']}) | "
        f"cold {summary['setup']['cold']['median_ms']:.0f} ms, "
        f"warm {summary['setup']['warm']['median_ms']:.0f} ms | — | {THESIS['setup_ms']} ms |",
        "",
        f"Concurrent requests ({CONCURRENCY} at once, {meta['runs']} rounds): latency per request, "
        "median / p90",
        "",
        "| size | peerproxyd | direct |",
        "|---|---|---|",
    ]
    for _, label in CONCURRENT_SIZES:
        a, b = p["concurrent"][label], d["concurrent"][label]
        lines.append(f"| {label} | {a['median_ms']:.1f} / {a['p90_ms']:.1f} ms "
                     f"| {b['median_ms']:.1f} / {b['p90_ms']:.1f} ms |")
    lines += ["", "Setup: cold = a fresh browser profile (the service worker installs first), "
              "warm = a reload. ![browser benchmark](browser.png)", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, kind in zip(axes[0], ("download", "upload")):
        for name, color in (("proxied", "tab:blue"), ("direct", "tab:gray")):
            pts = results[name][kind]
            ax.scatter([x / MIB for x, _ in pts], [y for _, y in pts], s=6, color=color,
                       label=f"{name}: {summary[name][kind]['mb_per_s']:.2f} MB/s")
            slope, intercept = linear_fit(pts)
            xs = [0, max(x for x, _ in pts)]
            ax.plot([x / MIB for x in xs], [intercept + slope * x for x in xs], color=color)
        ax.set_title(f"sequential {kind}s")
        ax.set_xlabel("size (MiB)")
        ax.set_ylabel("time (ms)")
        ax.legend()
    ax = axes[1][0]
    labels = [label for _, label in CONCURRENT_SIZES]
    xs = range(len(labels))
    for offset, (name, color) in enumerate((("proxied", "tab:blue"), ("direct", "tab:gray"))):
        ax.bar([x + offset * 0.4 for x in xs],
               [summary[name]["concurrent"][lbl]["median_ms"] for lbl in labels],
               width=0.4, color=color, label=name)
    ax.set_xticks([x + 0.2 for x in xs], labels)
    ax.set_title(f"{CONCURRENCY} concurrent GETs: median latency")
    ax.set_ylabel("ms")
    ax.legend()
    ax = axes[1][1]
    setup = results["setup_ms"]
    ax.boxplot([setup["cold"], setup["warm"]], tick_labels=["cold", "warm"])
    ax.axhline(THESIS["setup_ms"], color="tab:red", linestyle="--", label="thesis")
    ax.set_title("setup: page open → data channel open")
    ax.set_ylabel("ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--render", metavar="JSON", help="only redo browser.md/.png from a results file")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        summary = summarize(saved["results"])
        (BENCH / "browser.md").write_text(markdown(summary, saved["meta"]))
        plot(saved["results"], summary, BENCH / "browser.png")
        print(markdown(summary, saved["meta"]))
        return
    reason = unavailable_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    step = 500 * KIB if args.quick else 50 * KIB
    runs = args.runs or (2 if args.quick else 5)
    max_size = 5 * MIB
    sizes = list(range(0, max_size + 1, step))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    log_dir = BENCH / "results" / f"browser-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    world = BrowserWorld(log_dir)
    started = time.monotonic()
    try:
        world.up()
        assert world.agent is not None
        results = Bench(world, sizes, runs, setup_runs=3 if args.quick else 10).run()
        chromium = world.agent.page.evaluate("navigator.userAgent").split("Chrome/")[1].split(" ")[0]
    finally:
        world.down()
    meta = {
        "date": stamp, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{__import__('os').cpu_count()} cores", "chromium": chromium, "step": step,
        "max_size": max_size, "runs": runs, "setup_runs": 3 if args.quick else 10,
        "seconds": round(time.monotonic() - started),
    }
    summary = summarize(results)
    (BENCH / "results" / f"browser-{stamp}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "results": results}, indent=1))
    text = markdown(summary, meta)
    if args.quick:
        (log_dir / "browser.md").write_text(text)
        plot(results, summary, log_dir / "browser.png")
        print(f"quick run: {log_dir}/browser.md")
    else:
        (BENCH / "browser.md").write_text(text)
        plot(results, summary, BENCH / "browser.png")
    print(text)


if __name__ == "__main__":
    main()
