"""Browser data path, side by side: the browser client of a git ref against the working tree's,
in one run, in one BrowserWorld (so both see the same machine load), and profiles of it.

    python bench/browser_speed.py                   # main's webclient vs this tree's, 3 rounds
    python bench/browser_speed.py --base HEAD~1 --rounds 5 --size 32
    python bench/browser_speed.py --profile         # + CPU profiles (page, worker, daemon)
    PEERPROXYD_TEST_BACKEND=native .venv313/bin/python bench/browser_speed.py   # native daemon

The signaling server serves the client from a directory of its own; each round copies one
variant's webclient/ into it and opens a fresh browser context (fresh worker, empty cache),
alternating base, work, base, work... Measured in the app frame with performance.now():

- download: one GET of `--size` MiB, fetch() + reading the whole body (MB/s);
- upload: one POST of `--size` MiB to /api/sink (MB/s), the body a Uint8Array (as
  bench/browser.py does) and again a Blob (what a file input or FormData hands fetch());
- empty GET: 40 sequential GETs of /download?size=0 (median ms);
- direct: the same from http://127.0.0.1:8081/ in the same browser, once per round.

`--profile` profiles each variant's download and upload (a Blob body) separately: V8's sampling
profiler in the manager page and the service worker (bench/_cdp_profile.py, raw CDP inside the
namespace) and py-spy on the daemon; the self-time tops go to bench/results/<run>/profile.json
with the .cpuprofile and py-spy files. Needs root (ip netns).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from tests.browser.harness import APP_PORT, BrowserWorld, unavailable_reason  # noqa: E402
from tests.support.procs import TEST_BACKEND  # noqa: E402

MIB = 1024 * 1024
EMPTY_GETS = 40

MEASURE_JS = """async ({size, empties, uploads}) => {
    const t0 = performance.now();
    const r = await fetch('/download?size=' + size + '&r=' + Math.random());
    const got = await r.arrayBuffer();
    const download = performance.now() - t0;
    if (got.byteLength !== size) throw new Error('short download ' + got.byteLength);
    const up = async (body) => {
        const t1 = performance.now();
        const u = await fetch('/api/sink', {method: 'POST', body});
        const answer = await u.json();
        if (answer.size !== size) throw new Error('short upload ' + answer.size);
        return performance.now() - t1;
    };
    const upload = uploads ? await up(new Uint8Array(size)) : NaN;
    const uploadBlob = uploads ? await up(new Blob([new Uint8Array(size)])) : NaN;
    const empty = [];
    for (let i = 0; i < empties; i++) {
        const t = performance.now();
        const e = await fetch('/download?size=0&i=' + i);
        await e.arrayBuffer();
        empty.push(performance.now() - t);
    }
    return {download, upload, uploadBlob, empty};
}"""

ONE_JS = """async ({kind, size}) => {
    const body = kind === 'upload' ? new Blob([new Uint8Array(size)]) : null;
    const t = performance.now();
    const r = kind === 'upload'
        ? await fetch('/api/sink', {method: 'POST', body})
        : await fetch('/download?size=' + size + '&r=' + Math.random());
    await r.arrayBuffer();
    return performance.now() - t;
}"""


class World(BrowserWorld):
    """The signaling server serves the client from `self.served` (a config of its own)."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir, services={"camera": APP_PORT})
        self.served = log_dir / "webclient"
        shutil.copytree(ROOT / "webclient", self.served)
        (log_dir / "signal.toml").write_text(f'[server]\nwebclient_dir = "{self.served}"\n')

    def start(self, name: str, *args: str) -> Any:
        if name == "signal":
            args = (*args, "--config", str(self.log_dir / "signal.toml"))
        return super().start(name, *args)

    def serve(self, source: Path) -> None:
        for path in source.rglob("*"):
            if path.is_file():
                target = self.served / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)


def export(ref: str, dest: Path) -> Path:
    """webclient/ as of git `ref`, extracted under `dest`."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "webclient"],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "webclient"


def devtools_url(world: World) -> str:
    text = (world.log_dir / "chromium.log").read_text(errors="replace")
    return re.findall(r"DevTools listening on (ws://\S+)", text)[-1]


def pyspy_top(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self samples per function from py-spy's collapsed stacks (the leaf frame), as %."""
    self_: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        self_[re.sub(r" \(/.*/(site-packages|peerproxyd)/", r" (\1/", leaf)] += n
    return {"samples": total,
            "top": [[k, round(100 * v / max(total, 1), 1)] for k, v in self_.most_common(top)]}


def profile(world: World, out: Path, size: int) -> dict[str, Any]:
    """CPU profiles of one download and one upload of `size` bytes (the served variant)."""
    assert world.agent is not None
    result: dict[str, Any] = {}
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    for kind in ("download", "upload"):
        world.open("/")
        world.agent.app.evaluate(ONE_JS, {"kind": kind, "size": MIB})
        cdp = subprocess.Popen(
            ["ip", "netns", "exec", world.ns, sys.executable, str(ROOT / "bench/_cdp_profile.py"),
             devtools_url(world), str(out / kind)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert cdp.stdout is not None and cdp.stdin is not None
        print(" ", kind, cdp.stdout.readline().strip(), flush=True)
        raw = out / kind / "daemon.pyspy.txt"
        spy = subprocess.Popen([pyspy, "record", "--pid", str(world.procs["daemon"].pid),
                                "--rate", "250", "--format", "raw", "--nonblocking",
                                "--output", str(raw), "--duration", "120"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        ms = world.agent.app.evaluate(ONE_JS, {"kind": kind, "size": size})
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        cdp.stdin.write("stop\n")
        cdp.stdin.flush()
        tops = json.loads(cdp.stdout.readline())
        cdp.wait(30)
        tops["daemon (py-spy, % of samples)"] = pyspy_top(raw) if raw.exists() else {}
        result[kind] = {"ms": ms, "mb_per_s": size / ms / 1000, "profiles": tops}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git ref of the other client (main)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="MiB per download/upload (32)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--work", type=Path, default=ROOT / "webclient",
                        help="the webclient directory to measure (this tree's)")
    parser.add_argument("--no-uploads", action="store_true",
                        help="downloads and empty GETs only (a 64 MiB Uint8Array POST closes "
                        "this headless Chromium's page, even sent directly)")
    parser.add_argument("--no-compare", action="store_true", help="only the work variant")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"browser-speed-{stamp}"
    out.mkdir(parents=True)
    variants = {"work": args.work.resolve()}
    if not args.no_compare:
        variants = {"base": export(args.base, out / "base"), **variants}
    size = args.size * MIB
    world = World(out)
    kinds = ("download", "upload", "upload_blob", "empty")
    samples: dict[str, dict[str, list[float]]] = {
        v: {k: [] for k in kinds} for v in [*variants, "direct"]}
    load = [os.getloadavg()]
    try:
        world.up()
        assert world.agent is not None
        for r in range(args.rounds):
            for name, source in variants.items():
                world.serve(source)
                world.open("/")
                world.agent.app.evaluate(ONE_JS, {"kind": "download", "size": MIB})  # warm-up
                m = world.agent.app.evaluate(MEASURE_JS, {"size": size, "empties": EMPTY_GETS,
                                              "uploads": not args.no_uploads})
                samples[name]["download"].append(size / m["download"] / 1000)
                samples[name]["upload"].append(size / m["upload"] / 1000)
                samples[name]["upload_blob"].append(size / m["uploadBlob"] / 1000)
                samples[name]["empty"].append(statistics.median(m["empty"]))
                print(f"round {r} {name}: download {samples[name]['download'][-1]:.2f} MB/s, "
                      f"upload {samples[name]['upload'][-1]:.2f} MB/s (Blob "
                      f"{samples[name]['upload_blob'][-1]:.2f}), empty GET "
                      f"{samples[name]['empty'][-1]:.1f} ms", flush=True)
            world.agent.page.goto(f"http://127.0.0.1:{APP_PORT}/")
            m = world.agent.page.evaluate(MEASURE_JS, {"size": size, "empties": EMPTY_GETS,
                                              "uploads": not args.no_uploads})
            samples["direct"]["download"].append(size / m["download"] / 1000)
            samples["direct"]["upload"].append(size / m["upload"] / 1000)
            samples["direct"]["upload_blob"].append(size / m["uploadBlob"] / 1000)
            samples["direct"]["empty"].append(statistics.median(m["empty"]))
            load.append(os.getloadavg())
        profiles = None
        if args.profile:
            profiles = {}
            for name, source in variants.items():
                world.serve(source)
                print(f"profiling {name}", flush=True)
                profiles[name] = profile(world, out / name, size)
    finally:
        world.down()
    summary = {
        v: {k: {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
            for k, xs in s.items()} for v, s in samples.items()}
    meta = {"date": stamp, "backend": TEST_BACKEND, "base": args.base, "size_mib": args.size,
            "rounds": args.rounds, "loadavg": [round(x[0], 2) for x in load]}
    (out / "summary.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "samples": samples, "profiles": profiles}, indent=1))
    print(json.dumps(meta))
    print("| variant | download MB/s | upload MB/s (bytes) | upload MB/s (Blob) | empty GET ms |")
    print("|---|---|---|---|---|")
    for v, s in summary.items():
        cells = [f"{s[k]['median']:.2f} ({s[k]['min']:.2f}–{s[k]['max']:.2f})"
                 for k in ("download", "upload", "upload_blob", "empty")]
        print(f"| {v} | " + " | ".join(cells) + " |")
    if profiles:
        (out / "profile.json").write_text(json.dumps(profiles, indent=1))
        for variant, kind, p in [(v, k, p) for v, ps in profiles.items() for k, p in ps.items()]:
            print(f"\n## {variant} {kind}: {p['mb_per_s']:.2f} MB/s while profiled")
            for target, t in p["profiles"].items():
                print(f"### {target}: {t.get('busy_ms', '')} ms busy of {t.get('total_ms', '')}"
                      if "busy_ms" in t else f"### {target}: {t.get('samples')} samples")
                for name, v in t.get("top", [])[:14]:
                    print(f"    {v:>8}  {name}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
