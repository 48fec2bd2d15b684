"""Memory benchmark (issue 15 target 5): resident memory of each peerproxyd process, in one run.

    python bench/memory.py            # bench/memory-latest.json, logs under bench/results/
    python bench/memory.py --quick    # fewer samples; writes only under bench/results/

For each WebRTC backend the interpreter has (aiortc always; native where libdatachannel-py
imports), a real stack on 127.0.0.1: an aiohttp upstream, `peerproxyd signal`, `peerproxyd
serve` with `[transport] backend` set, and `peerproxyd connect --backend` to it. Figures
(VmRSS from /proc, MB = 2^20 bytes, the largest of a few samples a short while apart):

    signaling     `peerproxyd signal` idle, with its default STUN responder and without
    daemon idle   registered, no viewer
    client idle   `connect` with its data channel open, no request yet
    + 100 streams daemon and client while 100 GETs (each a stream of the tunnel) are open
                  at once through the client, minus the same process's figure with the
                  viewer connected before them: first "quiet" streams (the upstream sends
                  its head and one byte, then nothing), then "trickling" ones (a 256 KiB
                  body at RATE, in 64 KiB chunks)

Children run with `-X importtime`: the profile part lists, per process, the packages it
imported, and replays them in that order in a fresh interpreter, reading RSS after each,
which attributes the floor to packages (bench/README.md "Memory"). The children use the
interpreter given by --python (default: the native venv .venv313 when it can import
libdatachannel, so both backends run side by side on one Python; else this one).
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
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402

from tests.support.procs import (  # noqa: E402
    ROOT,
    Proc,
    free_port,
    new_device,
    share_link,
    wait_http,
)

BENCH = ROOT / "bench"
STREAMS = 100
STREAM_SIZE = 256 * 1024
RATE = 16 * 1024  # bytes a second per stream: each body lasts STREAM_SIZE / RATE seconds
TARGET_IDLE_MB = 60.0
TARGET_STREAMS_MB = 30.0
SERVICE = "bench"


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def sample(pids: dict[str, int], seconds: float, every: float = 0.25) -> dict[str, float]:
    """The largest VmRSS of each process over `seconds`."""
    peak = dict.fromkeys(pids, 0.0)
    for _ in range(max(1, int(seconds / every))):
        for name, pid in pids.items():
            peak[name] = max(peak[name], rss_mb(pid))
        time.sleep(every)
    return {name: round(value, 1) for name, value in peak.items()}


def default_python() -> str:
    native = ROOT / ".venv313" / "bin" / "python"  # the Makefile's VENV_NATIVE
    if native.exists() and _imports(str(native), "libdatachannel"):
        return str(native)
    return sys.executable


def _imports(python: str, module: str) -> bool:
    done = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60)
    return done.returncode == 0


class Stack:
    """Upstream, signaling, daemon and native client as child processes of `python`."""

    def __init__(self, python: str, log_dir: Path) -> None:
        self.python = python
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.env = {"PYTHONPATH": str(ROOT)}

    def start(self, name: str, *args: str) -> Proc:
        proc = Proc(name, [self.python, "-X", "importtime", *args], self.log_dir, env=self.env)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc | None = None) -> None:
        for p in [proc] if proc else list(reversed(self.procs)):
            p.stop()
            self.procs.remove(p)


def daemon_config(path: Path, state_dir: Path, signal_port: int, upstream: str,
                  backend: str) -> Path:
    path.write_text("\n".join([
        "[device]", f'state_dir = "{state_dir}"',
        "[signaling]", f'url = "ws://127.0.0.1:{signal_port}/ws"',
        "[ice]", 'host_addresses = ["127.0.0.1"]',
        "mdns = false",  # loopback only: no DNS-SD advertisement (zeroconf), no .local names
        "[transport]", f'backend = "{backend}"',
        f"[services.{SERVICE}]", f'upstream = "{upstream}"',
    ]) + "\n")
    return path


QUIET = 10.0  # seconds a quiet stream stays open: all are sampled and have ended before the next
STREAM_PATHS = {"quiet": f"/quiet?s={QUIET}",
                "trickling": f"/download?size={STREAM_SIZE}&rate={RATE}"}


async def open_streams(url: str, upstream: str, count: int, hold: float,
                       measure: Any) -> dict[str, Any]:
    """`count` GETs of `url` at once; `measure(hold)` runs while all are open."""
    started = asyncio.Event()
    opened = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal opened
        async with session.get(url) as response:
            assert response.status == 200, response.status
            await response.content.readany()  # the first chunk is here: the stream is open
            opened += 1
            if opened == count:
                started.set()
            await response.read()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session, \
            aiohttp.ClientSession() as probe:
        tasks = [asyncio.create_task(one(session)) for _ in range(count)]
        try:
            async with asyncio.timeout(60):
                await started.wait()
            async with probe.get(f"{upstream}/stats") as r:
                active = (await r.json())["active"]  # downloads in progress (not /quiet)
            figures = await asyncio.to_thread(measure, hold)
            async with asyncio.timeout(QUIET + 30):  # let them end: a request cancelled
                await asyncio.gather(*tasks)         # here frees its stream only later
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {"opened": opened, "active_upstream": active, "rss": figures}


def run_backend(stack: Stack, backend: str, signal_port: int, upstream: str, settle: float,
                hold: float) -> dict[str, Any]:
    state_dir = stack.log_dir / f"state-{backend}"
    new_device(state_dir)
    config = daemon_config(stack.log_dir / f"daemon-{backend}.toml", state_dir, signal_port,
                           upstream, backend)
    daemon = stack.start(f"daemon-{backend}", "-m", "peerproxyd", "serve", "--config",
                         str(config))
    daemon.wait_for_log("registered as")
    daemon_idle = sample({"daemon": daemon.pid}, settle)["daemon"]
    listen = free_port()
    client = stack.start(
        f"client-{backend}", "-m", "peerproxyd", "connect",
        share_link(state_dir, SERVICE, f"bench-{backend}"),
        "--signal", f"ws://127.0.0.1:{signal_port}/ws", "--listen", f"127.0.0.1:{listen}",
        "--host-address", "127.0.0.1", "--backend", backend,
    )
    client.wait_for_log("is at http")
    client.wait_for_log(r"data channel open in \d+ ms")
    pids = {"daemon": daemon.pid, "client": client.pid}
    before = sample(pids, settle)
    result: dict[str, Any] = {
        "daemon_idle_mb": daemon_idle,
        "daemon_one_viewer_mb": before["daemon"],
        "client_idle_mb": before["client"],
        "streams": {},
        "logs": {"daemon": str(daemon.log_path.relative_to(ROOT)),
                 "client": str(client.log_path.relative_to(ROOT))},
    }
    for kind, path in STREAM_PATHS.items():  # in this order: RSS does not shrink after
        streams = asyncio.run(open_streams(f"http://127.0.0.1:{listen}{path}", upstream,
                                           STREAMS, hold, lambda s: sample(pids, s)))
        after = streams["rss"]
        result["streams"][kind] = {
            "daemon_mb": after["daemon"], "client_mb": after["client"],
            "daemon_delta_mb": round(after["daemon"] - before["daemon"], 1),
            "client_delta_mb": round(after["client"] - before["client"], 1),
            "opened": streams["opened"], "active_upstream": streams["active_upstream"],
        }
    result["daemon_streams_delta_mb"] = max(
        k["daemon_delta_mb"] for k in result["streams"].values())
    result["client_streams_delta_mb"] = max(
        k["client_delta_mb"] for k in result["streams"].values())
    stack.stop(client)
    stack.stop(daemon)
    return result


# ----------------------------------------------------------------------------- the profile
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|( *)(\S+)$", re.M)


def imported_modules(log: str) -> list[str]:
    """The modules a process imported (its `-X importtime` lines), in the order they finished
    importing: a dependency before what needs it."""
    return list(dict.fromkeys(m.group(2) for m in _IMPORT_LINE.finditer(log)))


_REPLAY = """
import importlib, json, re, sys
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
out = [["(interpreter)", rss()]]
for name in json.loads(sys.stdin.read()):
    try:
        importlib.import_module(name)
    except Exception:
        continue
    out.append([name, rss()])
print(json.dumps(out))
"""


def replay(python: str, modules: list[str]) -> list[tuple[str, float]]:
    """RSS after importing each module in turn, in a fresh interpreter."""
    done = subprocess.run([python, "-c", _REPLAY], input=json.dumps(modules),
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    done.check_returncode()
    return [(name, float(mb)) for name, mb in json.loads(done.stdout)]


def profile(python: str, log_path: str, rss: float) -> dict[str, Any]:
    """What a process's RSS is made of: the interpreter, each package it imported (the
    standard library's modules summed), and the rest (what it allocated while running)."""
    stdlib = set(json.loads(subprocess.run(
        [python, "-c", "import json, sys; print(json.dumps(sorted(sys.stdlib_module_names)))"],
        capture_output=True, text=True, timeout=60, check=True).stdout))
    modules = [m for m in imported_modules((ROOT / log_path).read_text(errors="replace"))
               if m != "__main__"]
    steps = replay(python, modules)
    parts: dict[str, float] = {"(interpreter)": steps[0][1], "(stdlib)": 0.0}
    for (name, mb), (_, previous) in zip(steps[1:], steps[:-1], strict=True):
        top = name.split(".")[0]
        key = "(stdlib)" if top in stdlib else top
        parts[key] = parts.get(key, 0.0) + mb - previous
    parts["(running: connections, buffers, caches)"] = rss - steps[-1][1]
    ranked = sorted(parts.items(), key=lambda item: -item[1])
    tops = {m.split(".")[0] for m in modules}
    return {"imports_mb": round(steps[-1][1], 1), "rss_mb": rss,
            "parts_mb": {name: round(mb, 1) for name, mb in ranked},
            "webrtc": sorted(tops & {"aiortc", "av", "libdatachannel", "aioice", "pylibsrtp"})}


# ----------------------------------------------------------------------------- the run
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=None, help="interpreter of the children")
    parser.add_argument("--quick", action="store_true", help="short samples, no latest.json")
    args = parser.parse_args()
    python = args.python or default_python()
    settle, hold = (1.0, 1.0) if args.quick else (3.0, 3.0)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_dir = BENCH / "results"
    log_dir = results_dir / f"memory-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    backends = ["aiortc"] + (["native"] if _imports(python, "libdatachannel") else [])
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    report: dict[str, Any] = {
        "python": version, "load_average": list(os.getloadavg()), "streams": STREAMS,
        "stream": {"size": STREAM_SIZE, "rate": RATE},
        "targets_mb": {"idle": TARGET_IDLE_MB, "streams_delta": TARGET_STREAMS_MB},
    }
    stack = Stack(python, log_dir)
    try:
        port = free_port()
        stack.start("upstream", "-m", "tests.support.upstream_app", "--port", str(port),
                    "--name", SERVICE)
        upstream = f"http://127.0.0.1:{port}"
        wait_http(upstream + "/")
        signals = {}
        for name, stun in (("signal-nostun", "0"), ("signal", str(free_port()))):
            signal_port = free_port()
            signal = stack.start(name, "-m", "peerproxyd", "signal", "--port",
                                 str(signal_port), "--stun-port", stun)
            wait_http(f"http://127.0.0.1:{signal_port}/healthz")
            signals[name] = (signal, signal_port, sample({name: signal.pid}, settle)[name])
        report["signaling_idle_mb"] = signals["signal"][2]
        report["signaling_nostun_idle_mb"] = signals["signal-nostun"][2]
        signal, signal_port, _ = signals["signal"]
        report["backends"] = {
            backend: run_backend(stack, backend, signal_port, upstream, settle, hold)
            for backend in backends
        }
        signal_log = str(signal.log_path.relative_to(ROOT))
        report["profile"] = {"signaling": profile(python, signal_log, report["signaling_idle_mb"])}
        for backend, figures in report["backends"].items():
            report["profile"][f"daemon-{backend}"] = profile(
                python, figures["logs"]["daemon"], figures["daemon_idle_mb"])
            report["profile"][f"client-{backend}"] = profile(
                python, figures["logs"]["client"], figures["client_idle_mb"])
    finally:
        stack.stop()
    report["load_average_after"] = list(os.getloadavg())
    text = json.dumps(report, indent=1) + "\n"
    (results_dir / f"memory-{stamp}.json").write_text(text)
    if not args.quick:
        (BENCH / "memory-latest.json").write_text(text)
    print(summary(report))


def summary(report: dict[str, Any]) -> str:
    idle, streams = report["targets_mb"]["idle"], report["targets_mb"]["streams_delta"]

    def row(figure: str, target: float, measured: float) -> str:
        met = "met" if measured <= target else "not met"
        return f"{figure:44s} <= {target:4.0f} MB  {measured:6.1f} MB  {met}"

    lines = [f"Python {report['python']}, load {report['load_average'][0]:.2f}",
             row("signaling server idle (STUN on)", idle, report["signaling_idle_mb"]),
             row("signaling server idle (--stun-port 0)", idle,
                 report["signaling_nostun_idle_mb"])]
    for backend, f in report["backends"].items():
        lines += [row(f"daemon idle ({backend})", idle, f["daemon_idle_mb"]),
                  row(f"native client idle ({backend})", idle, f["client_idle_mb"])]
        for kind, k in f["streams"].items():
            lines += [row(f"daemon +{report['streams']} {kind} streams ({backend})", streams,
                          k["daemon_delta_mb"]),
                      row(f"client +{report['streams']} {kind} streams ({backend})", streams,
                          k["client_delta_mb"])]
    for name, p in report["profile"].items():
        top = ", ".join(f"{k} {v}" for k, v in list(p["parts_mb"].items())[:8])
        lines.append(f"{name}: {p['rss_mb']} MB = {top}, ...; WebRTC: {p['webrtc']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
