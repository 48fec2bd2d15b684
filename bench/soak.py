"""Soak: many viewers, many concurrent streams, for a long time; every body sha256-checked.

One network namespace made for the run (loopback only, as bench/browser.py and the browser
tests: tests/browser/harness.py) holds every process:

    upstream   an aiohttp app (this file, `upstream`): GET /blob, POST /sink, /echo-ws, GET /stream
    signal     python -m peerproxyd signal :8787
    daemon     python -m peerproxyd serve  (deployment defaults, service "camera" -> upstream)
    native-N   python -m peerproxyd connect <share link> (the native client), one per viewer,
               driven by driver-N (this file, `driver`): aiohttp, CONCURRENCY workers
    chromium-N headless Chromium (tests/browser/agent.py) on the share link: the browser
               client; CONCURRENCY workers of fetch()/WebSocket in the app frame

Each viewer runs CONCURRENCY workers at once, each in a loop until the end of the run:
workers 0 and 50 hold WebSocket echo sessions (8 binary messages, each echo compared), 1 and
51 long streams (256 KiB over 30 s), the others GETs (70 %) of 1 KiB-1 MiB and POST uploads
(30 %) of 1 KiB-512 KiB (sizes log-uniform). A GET's body must match the X-Sha256 the
upstream computed over what it sent; an upload's sha256 as the upstream received it must
match the sender's. Anything else (an error, a status other than 200, a mismatch, 300 s
without an answer) is a failure.

Every INTERVAL seconds: requests done and failed, p50/p99 latency of GETs and POSTs (first
byte sent -> whole body checked), open streams (requests in flight), RSS and CPU of the
daemon and the native clients, Chromium's PSS per process kind (browser, renderer, GPU,
network service, ...: `--type=` of each), the JS heap and array buffers of each browser's
page and service worker (raw CDP, `heaps`), and the load average; after the load, the same
once more after a full garbage collection. Writes bench/results/soak-<date>.json and
bench/soak.png. Needs root (ip netns).

    python bench/soak.py --minutes 30          # make soak (SOAK_MINUTES=30)
    python bench/soak.py --minutes 3 --interval 15
    python bench/soak.py --minutes 11 --rate 5 # 5 requests/s per viewer: throughput level
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Not bench/ itself on the path: its signal.py would shadow the standard library's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench._measure import descendants  # noqa: E402

BENCH = ROOT / "bench"
KIB, MIB = 1024, 1024 * 1024
UPSTREAM_PORT = 8081
REQUEST_TIMEOUT = 300.0
LONG_SIZE, LONG_SECONDS = 256 * KIB, 30.0
WS_MESSAGES = 8

# ----------------------------------------------------------------------------- upstream


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upstream(port: int) -> None:
    """The aiohttp app behind the daemon: random bodies with their sha256 in a header."""
    from aiohttp import WSMsgType, web

    no_store = {"Cache-Control": "no-store", "Content-Type": "application/octet-stream"}

    async def index(request: web.Request) -> web.Response:
        # HTML: the browser client injects its WebSocket shim into HTML documents only.
        return web.Response(text="<!doctype html><title>soak</title><p>soak upstream</p>",
                            content_type="text/html", headers={"Cache-Control": "no-store"})

    async def blob(request: web.Request) -> web.Response:
        body = os.urandom(int(request.query["size"]))
        return web.Response(body=body, headers={**no_store, "X-Sha256": sha(body)})

    async def stream(request: web.Request) -> web.StreamResponse:
        size, seconds = int(request.query["size"]), float(request.query["seconds"])
        body = os.urandom(size)
        response = web.StreamResponse(headers={**no_store, "X-Sha256": sha(body)})
        response.content_length = size
        await response.prepare(request)
        steps = max(1, int(seconds))
        step = math.ceil(size / steps)
        for i in range(0, size, step):
            await response.write(body[i:i + step])
            await asyncio.sleep(seconds / steps)
        await response.write_eof()
        return response

    async def sink(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        while chunk := await request.content.readany():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "size": size},
                                 headers={"Cache-Control": "no-store"})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(max_msg_size=4 * MIB)
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await sock.send_str(msg.data)
        return sock

    app = web.Application(client_max_size=64 * MIB)
    app.router.add_get("/", index)
    app.router.add_get("/blob", blob)
    app.router.add_get("/stream", stream)
    app.router.add_post("/sink", sink)
    app.router.add_get("/echo-ws", ws)
    print(f"soak upstream listening on {port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ----------------------------------------------------------------------------- workload


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def job_of(worker: int) -> str:
    """What worker `worker` of a viewer does in a loop (the same in Python and in JS)."""
    return {0: "ws", 1: "long"}.get(worker % 50, "mixed")


class Tally:
    """Cumulative counts, and the latencies and errors since the last report."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}
        self.failed = 0
        self.inflight = 0
        self.bytes = 0
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def ok(self, kind: str, seconds: float, size: int) -> None:
        self.done[kind] = self.done.get(kind, 0) + 1
        self.bytes += size
        if kind in ("get", "post"):
            self.latencies.append(seconds)

    def fail(self, kind: str, error: str) -> None:
        self.failed += 1
        if len(self.errors) < 20:
            self.errors.append(f"{kind}: {error}"[:300])

    def report(self) -> dict[str, Any]:
        out = {"done": dict(self.done), "failed": self.failed, "inflight": self.inflight,
               "bytes": self.bytes, "latencies": self.latencies, "errors": self.errors}
        self.latencies, self.errors = [], []
        return out


class Pace:
    """At most `rate` starts a second over the workers that wait on it (0: no limit); a slot
    missed (every worker busy) is not made up later, so the rate never bursts."""

    def __init__(self, rate: float) -> None:
        self.gap = 1 / rate if rate else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(self.next, now)
        self.next = slot + self.gap
        await asyncio.sleep(slot - now)


async def drive(base: str, end_at: float, concurrency: int, seed: int, report_to: Path,
                interval: float, rate: float) -> None:
    """One native viewer's load: `concurrency` workers against `base` until `end_at`, at
    most `rate` requests started a second (0: as fast as they answer)."""
    import aiohttp

    rng = random.Random(seed)
    pace = Pace(rate)
    pool = os.urandom(2 * MIB)
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)

    def piece(size: int) -> bytes:
        start = rng.randrange(0, len(pool) - size)
        return pool[start:start + size]

    async def one(http: aiohttp.ClientSession, kind: str) -> int:
        if kind == "get":
            size = log_uniform(rng, KIB, MIB)
            async with http.get(f"{base}/blob?size={size}&r={rng.random()}") as r:
                body = await r.read()
                if r.status != 200 or len(body) != size or sha(body) != r.headers["X-Sha256"]:
                    raise ValueError(f"GET {size}: status {r.status}, {len(body)} bytes, "
                                     f"sha256 {'ok' if sha(body) == r.headers.get('X-Sha256') else 'BAD'}")
                return size
        if kind == "post":
            body = piece(log_uniform(rng, KIB, 512 * KIB))
            async with http.post(f"{base}/sink", data=body) as r:
                got = await r.json() if r.status == 200 else {"status": r.status}
                if got.get("sha256") != sha(body):
                    raise ValueError(f"POST {len(body)}: upstream saw {got}")
                return len(body)
        if kind == "long":
            async with http.get(f"{base}/stream?size={LONG_SIZE}&seconds={LONG_SECONDS}") as r:
                body = await r.read()
                if r.status != 200 or sha(body) != r.headers["X-Sha256"]:
                    raise ValueError(f"long stream: status {r.status}, {len(body)} bytes")
                return len(body)
        total = 0
        async with http.ws_connect(f"{base}/echo-ws", max_msg_size=4 * MIB) as ws:
            for _ in range(WS_MESSAGES):
                message = piece(log_uniform(rng, 16, 64 * KIB))
                await ws.send_bytes(message)
                echo = await ws.receive()
                if echo.type is not aiohttp.WSMsgType.BINARY or echo.data != message:
                    raise ValueError(f"WebSocket echo of {len(message)} bytes: {echo.type}")
                total += len(message)
        return total

    async def worker(http: aiohttp.ClientSession, index: int) -> None:
        job = job_of(index)
        while time.time() < end_at:
            await pace.wait()
            kind = job if job != "mixed" else ("get" if rng.random() < 0.7 else "post")
            tally.inflight += 1
            started = time.monotonic()
            try:
                size = await asyncio.wait_for(one(http, kind), REQUEST_TIMEOUT)
            except Exception as error:  # every failure counted, the run goes on
                tally.fail(kind, f"{type(error).__name__}: {error}")
                await asyncio.sleep(1)
            else:
                tally.ok(kind, time.monotonic() - started, size)
            finally:
                tally.inflight -= 1

    async def reporter(workers: asyncio.Future[Any]) -> None:
        with report_to.open("a") as out:
            while not workers.done():
                await asyncio.wait([workers], timeout=interval - time.time() % interval)
                out.write(json.dumps({"t": time.time(), **tally.report()}) + "\n")
                out.flush()

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        workers = asyncio.gather(*(worker(http, i) for i in range(concurrency)))
        await reporter(workers)
        await workers


BROWSER_JS = """async ({concurrency, endAt, timeoutMs, longSize, longSeconds, wsMessages, rate}) => {
    const KIB = 1024, MIB = 1024 * 1024;
    const T = window.__soak = {done: {}, failed: 0, inflight: 0, bytes: 0, latencies: [],
                               errors: [], finished: 0};
    const pool = new Uint8Array(2 * MIB);
    for (let i = 0; i < pool.length; i += 65536) crypto.getRandomValues(pool.subarray(i, i + 65536));
    const logUniform = (lo, hi) => Math.floor(Math.exp(Math.log(lo) + Math.random() * (Math.log(hi) - Math.log(lo))));
    const piece = n => { const s = Math.floor(Math.random() * (pool.length - n)); return pool.slice(s, s + n); };
    const hex = b => Array.from(new Uint8Array(b), x => x.toString(16).padStart(2, '0')).join('');
    const sha = async b => hex(await crypto.subtle.digest('SHA-256', b));
    const same = (a, b) => { const x = ArrayBuffer.isView(a) ? new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
        : new Uint8Array(a); return x.length === b.length && x.every((v, i) => v === b[i]); };
    let nextSlot = performance.now();  // at most `rate` starts a second (0: no limit), as Pace
    const pace = async () => { const now = performance.now(), slot = Math.max(nextSlot, now);
        nextSlot = slot + (rate ? 1000 / rate : 0);
        if (slot > now) await new Promise(r => setTimeout(r, slot - now)); };
    const withTimeout = (p, what) => Promise.race([p, new Promise((_, reject) =>
        setTimeout(() => reject(new Error(what + ': no answer in ' + timeoutMs + ' ms')), timeoutMs))]);
    const one = async kind => {
        if (kind === 'get') {
            const size = logUniform(KIB, MIB);
            const r = await fetch('/blob?size=' + size + '&r=' + Math.random());
            const body = await r.arrayBuffer();
            const digest = await sha(body);
            if (r.status !== 200 || body.byteLength !== size || digest !== r.headers.get('X-Sha256'))
                throw new Error('GET ' + size + ': status ' + r.status + ', ' + body.byteLength + ' bytes, sha256 ' + (digest === r.headers.get('X-Sha256') ? 'ok' : 'BAD'));
            return size;
        }
        if (kind === 'post') {
            const body = piece(logUniform(KIB, 512 * KIB));
            const r = await fetch('/sink', {method: 'POST', body});
            const got = r.status === 200 ? await r.json() : {status: r.status};
            if (got.sha256 !== await sha(body)) throw new Error('POST ' + body.length + ': upstream saw ' + JSON.stringify(got));
            return body.length;
        }
        if (kind === 'long') {
            const r = await fetch('/stream?size=' + longSize + '&seconds=' + longSeconds);
            const body = await r.arrayBuffer();
            if (r.status !== 200 || await sha(body) !== r.headers.get('X-Sha256'))
                throw new Error('long stream: status ' + r.status + ', ' + body.byteLength + ' bytes');
            return body.byteLength;
        }
        const ws = new WebSocket('/echo-ws');
        ws.binaryType = 'arraybuffer';
        const inbox = [], waiting = [];
        let closed = null;
        ws.onmessage = e => waiting.length ? waiting.shift().resolve(e.data) : inbox.push(e.data);
        ws.onclose = e => { closed = new Error('WebSocket closed: ' + e.code + ' ' + e.reason);
                            while (waiting.length) waiting.shift().reject(closed); };
        const next = () => inbox.length ? Promise.resolve(inbox.shift()) : closed ? Promise.reject(closed)
            : new Promise((resolve, reject) => waiting.push({resolve, reject}));
        await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('WebSocket error')); });
        let total = 0;
        try {
            for (let i = 0; i < wsMessages; i++) {
                const message = piece(logUniform(16, 64 * KIB));
                ws.send(message);
                const echo = await next();
                if (typeof echo === 'string' || !same(echo, message))
                    throw new Error('WebSocket echo of ' + message.length + ' bytes differs: got '
                        + Object.prototype.toString.call(echo) + ' of ' + (echo.byteLength ?? echo.length));
                total += message.length;
            }
        } finally { ws.close(1000); }
        return total;
    };
    const worker = async index => {
        const job = {0: 'ws', 1: 'long'}[index % 50] || 'mixed';
        while (Date.now() / 1000 < endAt) {
            await pace();
            const kind = job !== 'mixed' ? job : (Math.random() < 0.7 ? 'get' : 'post');
            T.inflight++;
            const t = performance.now();
            try {
                const size = await withTimeout(one(kind), kind);
                T.done[kind] = (T.done[kind] || 0) + 1;
                T.bytes += size;
                if (kind === 'get' || kind === 'post') T.latencies.push((performance.now() - t) / 1000);
            } catch (e) {
                T.failed++;
                if (T.errors.length < 20) T.errors.push((kind + ': ' + e).slice(0, 300));
                await new Promise(r => setTimeout(r, 1000));
            } finally { T.inflight--; }
        }
        T.finished++;
    };
    for (let i = 0; i < concurrency; i++) worker(i);
    return true;
}"""

BROWSER_REPORT_JS = """() => { const T = window.__soak;
    const out = {done: T.done, failed: T.failed, inflight: T.inflight, bytes: T.bytes,
                 latencies: T.latencies, errors: T.errors, finished: T.finished};
    T.latencies = []; T.errors = []; return out; }"""


# ----------------------------------------------------------------------------- processes


async def heaps(url: str, gc: bool) -> dict[str, dict[str, float]]:
    """Run INSIDE the namespace (DevTools listens on its loopback): Runtime.getHeapUsage (MB)
    of the manager page (its isolate: the app frame too when it shares the process), of an
    out-of-process app frame and of the service worker, of the browser at `url` (raw CDP,
    flat sessions); `gc`: after a full garbage collection in each."""
    import aiohttp

    from bench._cdp_profile import Cdp

    names = {"page": "page", "iframe": "app", "service_worker": "worker"}
    out: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        cdp = Cdp(ws)
        for target in (await cdp.send("Target.getTargets"))["targetInfos"]:
            if target["type"] not in names or target["url"] == "about:blank":
                continue
            sid = (await cdp.send("Target.attachToTarget", {"targetId": target["targetId"],
                                                             "flatten": True}))["sessionId"]
            if gc:
                await cdp.send("HeapProfiler.collectGarbage", session=sid)
            usage = await cdp.send("Runtime.getHeapUsage", session=sid)
            await cdp.send("Target.detachFromTarget", {"sessionId": sid})
            name = names[target["type"]]
            out[name if name not in out else f"{name}-{len(out)}"] = {
                k.removesuffix("Size"): round(v / MIB, 2) for k, v in usage.items()}
        cdp.reader.cancel()
    return out


def browser_heaps(ns: str, chromium_log: Path, *, gc: bool = False) -> dict[str, Any]:
    """`heaps` of one Chromium (its DevTools URL from its log), run in the namespace."""
    url = re.findall(r"DevTools listening on (ws://\S+)", chromium_log.read_text(errors="replace"))[-1]
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, str(BENCH / "soak.py"), "heaps", url,
         *(["--gc"] if gc else [])], capture_output=True, text=True, timeout=60, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr.strip()[-300:])
    return json.loads(done.stdout)


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _pss_kib(pid: int, field: str = "Pss") -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def chromium_type(pid: int) -> str:
    """A Chromium process's kind from its command line: browser, renderer, gpu-process,
    zygote, crashpad, or the utility's service (network, storage, audio, ...)."""
    try:  # NUL-separated for the browser; its children rewrite theirs with spaces
        line = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    kind = re.search(r"--type=([\w-]+)", line)
    if kind is None:
        return "crashpad" if "crashpad_handler" in line else "browser"
    service = re.search(r"--utility-sub-type=(\w+)", line)
    return service.group(1) if kind.group(1) == "utility" and service else kind.group(1)


class Group:
    """Processes measured together: RSS (Python) or PSS summed over a tree (Chromium), CPU."""

    def __init__(self, name: str, pids: list[int], *, tree: bool = False) -> None:
        self.name, self.pids, self.tree = name, pids, tree
        self._cpu = self._cpu_seconds()
        self._at = time.monotonic()

    def _members(self) -> list[int]:
        return [p for root in self.pids for p in descendants(root)] if self.tree else self.pids

    def _cpu_seconds(self) -> float:
        from bench._measure import cpu_seconds

        return sum(cpu_seconds(p) for p in self._members())

    def sample(self) -> dict[str, float]:
        members = self._members()
        cpu, now = self._cpu_seconds(), time.monotonic()
        cores = (cpu - self._cpu) / (now - self._at) if cpu >= self._cpu else 0.0
        self._cpu, self._at = cpu, now
        if not self.tree:
            return {"mem_mb": sum(_status_kib(p, "VmRSS") for p in members) / 1024,
                    "cpu_cores": cores}
        # Chromium: PSS per process kind, and how much of it is shared memory (IPC, data pipes)
        by_type: dict[str, dict[str, float]] = {}
        for pid in members:
            kind = by_type.setdefault(chromium_type(pid), {"pss_mb": 0.0, "shmem_mb": 0.0, "n": 0})
            kind["pss_mb"] += _pss_kib(pid) / 1024
            kind["shmem_mb"] += _pss_kib(pid, "Pss_Shmem") / 1024
            kind["n"] += 1
        return {"mem_mb": sum(k["pss_mb"] for k in by_type.values()), "cpu_cores": cores,
                "by_type": by_type}


def start_world(log_dir: Path, natives: int, browsers: int) -> tuple[Any, dict[str, str]]:
    """The namespace, upstream, signaling, daemon (defaults) and one share link per viewer."""
    from tests.browser.harness import SERVICE, BrowserWorld
    from tests.support.procs import Proc

    class SoakWorld(BrowserWorld):
        def start_daemon(self) -> Proc:
            # Deployment defaults (heartbeats, limits, timeouts), loopback only.
            self.config.write_text("\n".join([
                "[device]", f'state_dir = "{self.state_dir}"',
                "[signaling]", 'url = "ws://127.0.0.1:8787/ws"',
                "[ice]", 'host_addresses = ["127.0.0.1"]', "mdns = false",
                f"[services.{SERVICE}]", f'upstream = "http://127.0.0.1:{UPSTREAM_PORT}"',
            ]) + "\n")
            proc = self.start("daemon", "-m", "peerproxyd", "serve", "--config", str(self.config))
            proc.wait_for_log("registered as")
            return proc

    world = SoakWorld(log_dir, services={SERVICE: UPSTREAM_PORT}, test_app=False)
    links: dict[str, str] = {}
    try:
        from tests.browser import harness

        harness._run("ip", "netns", "add", world.ns)
        world._made = True
        harness._run("ip", "-n", world.ns, "link", "set", "lo", "up")
        world.start("upstream", "bench/soak.py", "upstream", "--port", str(UPSTREAM_PORT))
        world.start("signal", "-m", "peerproxyd", "signal", "--port", "8787")
        world.procs["upstream"].wait_for_log("soak upstream listening")
        world.procs["signal"].wait_for_log("signaling server listening")
        world.start_daemon()
        for name in [f"native-{i + 1}" for i in range(natives)] + [
                f"chromium-{i + 1}" for i in range(browsers)]:
            links[name] = world.share(name, SERVICE)
    except BaseException:
        world.down()
        raise
    return world, links


def open_tab(world: Any, name: str, link: str, log_dir: Path) -> Any:
    """A Chromium of its own (tests/browser/agent.py) with the share link open, connected."""
    from tests.browser.harness import Agent

    agent_dir = log_dir / name
    agent_dir.mkdir(exist_ok=True)
    agent = Agent(world.ns, agent_dir)
    agent.new_page()
    agent.page.goto(link)
    agent.page.wait_for_function("p => document.body.dataset.phase === p", arg="connected",
                                 timeout=60_000)
    agent.page.wait_for_function(
        "() => { const d = document.getElementById('app')?.contentDocument;"
        " return !!d && d.URL !== 'about:blank'; }", timeout=60_000)
    return agent


# ----------------------------------------------------------------------------- the run


def percentiles(values: list[float]) -> dict[str, float | None]:
    from bench._measure import percentile

    if not values:
        return {"p50_s": None, "p99_s": None}
    return {"p50_s": percentile(values, 0.5), "p99_s": percentile(values, 0.99)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench._measure import machine

    args.machine_info = machine(("aiortc", "aioice", "aiohttp", "uvloop"), chromium=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    log_dir = BENCH / "results" / f"soak-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"logs: {log_dir}", flush=True)
    world, links = start_world(log_dir, args.native, args.browsers)
    agents: dict[str, Any] = {}
    drivers: dict[str, Path] = {}
    series: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    after_gc: dict[str, Any] = {}
    started_wall = time.time()
    try:
        for i in range(args.native):
            name = f"native-{i + 1}"
            port = 9001 + i
            client = world.start(
                name, "-m", "peerproxyd", "connect", links[name],
                "--signal", "ws://127.0.0.1:8787/ws", "--listen", f"127.0.0.1:{port}",
                "--host-address", "127.0.0.1")
            client.wait_for_log("data channel open in", timeout=60)
        for i in range(args.browsers):
            name = f"chromium-{i + 1}"
            agents[name] = open_tab(world, name, links[name], log_dir)
        end_at = time.time() + args.minutes * 60
        for i in range(args.native):
            name = f"native-{i + 1}"
            drivers[name] = log_dir / f"{name}.jsonl"
            world.start(f"driver-{i + 1}", "bench/soak.py", "driver", "--base",
                        f"http://127.0.0.1:{9001 + i}", "--end-at", str(end_at),
                        "--concurrency", str(args.concurrency), "--seed", str(i),
                        "--report-to", str(drivers[name]), "--interval", str(args.interval),
                        "--rate", str(args.rate))
        for name, agent in agents.items():
            agent.app.evaluate(BROWSER_JS, {
                "concurrency": args.concurrency, "endAt": end_at,
                "timeoutMs": REQUEST_TIMEOUT * 1000, "longSize": LONG_SIZE,
                "longSeconds": LONG_SECONDS, "wsMessages": WS_MESSAGES, "rate": args.rate})
        groups = [Group("daemon", [world.procs["daemon"].pid]),
                  *(Group(n, [world.procs[n].pid]) for n in drivers),
                  *(Group(n, [a.chromium_pid], tree=True) for n, a in agents.items()),
                  Group("signal", [world.procs["signal"].pid]),
                  Group("upstream", [world.procs["upstream"].pid]),
                  Group("load-generators", [world.procs[f"driver-{i + 1}"].pid
                                            for i in range(args.native)])]
        offsets = {n: 0 for n in drivers}
        latest: dict[str, dict[str, Any]] = {}
        began = time.time()
        hard_end = end_at + REQUEST_TIMEOUT + 60
        while True:
            # 2 s after each driver's report (they report at multiples of the interval)
            time.sleep(args.interval - (time.time() - 2) % args.interval)
            now = time.time()
            latencies: dict[str, list[float]] = {"native": [], "browser": []}
            for name, path in drivers.items():
                text = path.read_text() if path.exists() else ""
                for line in text[offsets[name]:].splitlines():
                    record = json.loads(line)
                    latencies["native"] += record["latencies"]
                    errors += [{"t": record["t"] - began, "viewer": name, "error": e}
                               for e in record["errors"]]
                    latest[name] = record
                offsets[name] = len(text)
            for name, agent in agents.items():
                try:
                    record = agent.app.evaluate(BROWSER_REPORT_JS)
                except Exception as error:  # a tab that is gone counts as failures below
                    errors.append({"t": now - began, "viewer": name, "error": f"agent: {error}"})
                    continue
                try:  # the JS heaps: page (and app frame), service worker
                    record["heaps"] = browser_heaps(world.ns, log_dir / name / "chromium.log")
                except Exception as error:
                    record["heaps"] = {"error": str(error)[:300]}
                latencies["browser"] += record["latencies"]
                errors += [{"t": now - began, "viewer": name, "error": e} for e in record["errors"]]
                latest[name] = record
            point: dict[str, Any] = {
                "t_s": round(now - began, 1),
                "requests": sum(sum(r["done"].values()) for r in latest.values()),
                "failures": sum(r["failed"] for r in latest.values()),
                "bytes": sum(r["bytes"] for r in latest.values()),
                "open_streams": sum(r["inflight"] for r in latest.values()),
                "by_kind": {k: sum(r["done"].get(k, 0) for r in latest.values())
                            for k in ("get", "post", "ws", "long")},
                "latency": {"all": percentiles(latencies["native"] + latencies["browser"]),
                            "native": percentiles(latencies["native"]),
                            "browser": percentiles(latencies["browser"])},
                "interval_requests": len(latencies["native"]) + len(latencies["browser"]),
                "processes": {g.name: g.sample() for g in groups},
                "loadavg_1m": os.getloadavg()[0],
                "viewers": {n: {"requests": sum(r["done"].values()), "failed": r["failed"],
                                "inflight": r["inflight"], "heaps": r.get("heaps")}
                            for n, r in latest.items()},
            }
            series.append(point)
            lat = point["latency"]["all"]
            procs = point["processes"]
            print(f"{point['t_s']:7.0f} s  requests {point['requests']:6d}  failures "
                  f"{point['failures']}  open {point['open_streams']:3d}  p50/p99 "
                  f"{_fmt(lat['p50_s'])}/{_fmt(lat['p99_s'])} s  daemon "
                  f"{procs['daemon']['mem_mb']:.0f} MB {procs['daemon']['cpu_cores']:.2f} cores"
                  f"  load {point['loadavg_1m']:.1f}", flush=True)
            _dump(args, stamp, started_wall, series, errors, log_dir, partial=True)
            finished = now >= end_at and point["open_streams"] == 0 and all(
                world.procs[f"driver-{i + 1}"].popen.poll() is not None
                for i in range(args.native))
            if finished or now > hard_end:
                break
        # The load is over: what a full garbage collection in every isolate gives back.
        for name in agents:
            after_gc[name] = {"heaps": browser_heaps(world.ns, log_dir / name / "chromium.log",
                                                     gc=True)}
        time.sleep(10)
        for g in groups:
            if g.name in after_gc:
                after_gc[g.name]["process"] = g.sample()
        _dump(args, stamp, started_wall, series, errors, log_dir, partial=True, after_gc=after_gc)
    finally:
        for agent in agents.values():
            agent.quit()
        world.agent = None
        world.down()
    return _dump(args, stamp, started_wall, series, errors, log_dir, partial=False,
                 after_gc=after_gc)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def parts(point: dict[str, Any], name: str) -> dict[str, float]:
    """One Chromium's memory at `point` in parts (MB): PSS per process kind, and the JS heap
    (used) and array buffers (V8's backing stores, outside that heap) of the page and worker."""
    out = {kind: v["pss_mb"] for kind, v in point["processes"][name].get("by_type", {}).items()}
    for target, usage in ((point["viewers"].get(name) or {}).get("heaps") or {}).items():
        if isinstance(usage, dict):
            out[f"{target} JS heap"] = usage["used"]
            out[f"{target} array buffers"] = usage.get("backingStorage", 0.0)
    return out


def growth(series: list[dict[str, Any]], key: str, start_s: float, end_s: float,
           part: str | None = None) -> dict[str, Any]:
    """Memory of `key` (or of that Chromium's `part`) from `start_s` (the end of warm-up) to
    `end_s` (the end of the load): the median of the first three samples, of the last three,
    their ratio, the peak, and the same ratio over the last third of that span."""
    values = [(p["t_s"], p["processes"][key]["mem_mb"] if part is None
               else parts(p, key).get(part, 0.0))
              for p in series if start_s <= p["t_s"] <= end_s]
    if len(values) < 6:
        return {}
    first = statistics.median(v for _, v in values[:3])
    last = statistics.median(v for _, v in values[-3:])
    third = values[len(values) * 2 // 3:]
    third_first = statistics.median(v for _, v in third[:3])
    return {"from_s": values[0][0], "at_start_mb": round(first, 1), "at_end_mb": round(last, 1),
            "growth_pct": round((last / first - 1) * 100, 1) if first else None,
            "peak_mb": round(max(v for _, v in values), 1),
            "last_third_from_s": third[0][0],
            "last_third_growth_pct": round((last / third_first - 1) * 100, 1)
            if third_first else None}


def part_growth(series: list[dict[str, Any]], start_s: float, end_s: float) -> dict[str, Any]:
    """`growth` of each part of each Chromium (`parts`)."""
    names = [n for n in series[-1]["processes"] if n.startswith("chromium")] if series else []
    return {n: {part: growth(series, n, start_s, end_s, part) for part in parts(series[-1], n)}
            for n in names}


def _dump(args: argparse.Namespace, stamp: str, started: float, series: list[dict[str, Any]],
          errors: list[dict[str, Any]], log_dir: Path, *, partial: bool,
          after_gc: dict[str, Any] | None = None) -> dict[str, Any]:
    warmup_s = args.warmup * 60
    names = list(series[-1]["processes"]) if series else []
    result = {
        "meta": {"date": stamp, "started_utc": datetime.fromtimestamp(started, timezone.utc)
                 .isoformat(timespec="seconds"), "minutes": args.minutes,
                 "interval_s": args.interval, "warmup_s": warmup_s, "native_viewers": args.native,
                 "browser_viewers": args.browsers, "concurrency": args.concurrency,
                 "rate_per_viewer": args.rate, "machine": args.machine_info, "partial": partial, "logs": str(log_dir.relative_to(ROOT))},
        "totals": {k: series[-1][k] for k in ("requests", "failures", "bytes", "by_kind")}
        if series else {},
        "memory_growth_after_warmup": {n: growth(series, n, warmup_s, args.minutes * 60 + 1)
                                       for n in names
                                       if n not in ("load-generators",)},
        "chromium_growth_by_part": part_growth(series, warmup_s, args.minutes * 60 + 1),
        "after_load_and_gc": after_gc or {},
        "errors": errors[:200],
        "series": series,
    }
    path = BENCH / "results" / f"soak-{stamp}.json"
    path.write_text(json.dumps(result, indent=1))
    return result


def summary(result: dict[str, Any]) -> str:
    """The figures of a run as the markdown table of docs/reliability.md "Soak"."""
    meta, series = result["meta"], result["series"]
    load = [p for p in series if p["t_s"] <= meta["minutes"] * 60 + 1 and p["interval_requests"]]

    def span(values: list[float], unit: str, digits: int = 1) -> str:
        unit = f" {unit}" if unit else ""
        return (f"{min(values):.{digits}f}–{max(values):.{digits}f}{unit} "
                f"(median {statistics.median(values):.{digits}f})")

    def lat(who: str, q: str) -> str:
        return span([p["latency"][who][q] for p in load if p["latency"][who][q] is not None], "s")

    totals = result["totals"]
    seconds = load[-1]["t_s"] if load else 1
    kinds = " / ".join(f"{totals['by_kind'][k]:,}" for k in ("get", "post", "ws", "long"))
    lines = ["| figure | value |", "|---|---|",
             f"| requests (GET / POST / WebSocket sessions / long streams) | "
             f"{totals['requests']:,} ({kinds}), "
             f"{totals['bytes'] / 1e9:.2f} GB of bodies, ~{totals['requests'] / seconds:.0f} requests/s |",
             f"| failures | {totals['failures']} |",
             f"| open streams during the load | {span([p['open_streams'] for p in load], '', 0)} |"]
    for who in ("native", "browser"):
        lines.append(f"| {who} GET/POST latency per interval, p50 | {lat(who, 'p50_s')} |")
        lines.append(f"| {who} GET/POST latency per interval, p99 | {lat(who, 'p99_s')} |")
    for name in load[0]["processes"] if load else []:
        if name in ("signal", "load-generators"):
            continue
        cpu = [p["processes"][name]["cpu_cores"] for p in load]
        g = result["memory_growth_after_warmup"].get(name) or {}
        mem = (f"{g['at_start_mb']:.0f} → {g['at_end_mb']:.0f} MB ({g['growth_pct']:+.1f} %; "
               f"last third {g['last_third_growth_pct']:+.1f} %), peak {g['peak_mb']:.0f} MB"
               if g else "-")
        lines.append(f"| {name}: memory after warm-up; CPU | {mem}; {span(cpu, 'cores', 2)} |")
    by_parts = result.get("chromium_growth_by_part") or part_growth(
        series, meta["warmup_s"], meta["minutes"] * 60 + 1)
    for name, by_part in by_parts.items():
        shown = [f"{part} {g['at_start_mb']:.0f} → {g['at_end_mb']:.0f} ({g['growth_pct']:+.0f} %)"
                 if g["at_start_mb"] >= 10 and g["growth_pct"] is not None else
                 f"{part} {g['at_start_mb']:.1f} → {g['at_end_mb']:.1f}"
                 for part, g in by_part.items() if g and g["peak_mb"] >= 0.5]
        if shown:  # (older results have no parts)
            lines.append(f"| {name} in parts (MB): after warm-up | {'; '.join(shown)} |")
    for name, end in result.get("after_load_and_gc", {}).items():
        shown = [f"{kind} {v['pss_mb']:.0f}" for kind, v in end["process"]["by_type"].items()]
        shown += [f"{target} JS heap {u['used']:.1f}, array buffers {u['backingStorage']:.1f}"
                  for target, u in end["heaps"].items()]
        lines.append(f"| {name} after the load and a full GC (MB) | "
                     f"PSS {end['process']['mem_mb']:.0f}: {'; '.join(shown)} |")
    lines.append(f"| load average (1 min, 2 cores) | {span([p['loadavg_1m'] for p in load], '')} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["series"]
    t = [p["t_s"] / 60 for p in series]
    fig, axes = plt.subplots(3, 3, figsize=(15, 12))
    ax = axes[0][0]
    rate = [series[0]["requests"] / series[0]["t_s"]] + [(b["requests"] - a["requests"]) / (b["t_s"] - a["t_s"])
                    for a, b in zip(series, series[1:])]
    ax.plot(t, rate, label="requests/s")
    ax.plot(t, [p["failures"] for p in series], color="tab:red", label="failures (cumulative)")
    ax.set_title(f"{result['totals']['requests']:,} requests, {result['totals']['failures']} failures")
    ax.legend()
    ax = axes[0][1]
    for who, color in (("native", "tab:blue"), ("browser", "tab:orange")):
        for q, style in (("p50_s", "-"), ("p99_s", "--")):
            ax.plot(t, [p["latency"][who][q] for p in series], style, color=color,
                    label=f"{who} {q[:3]}")
    ax.set_yscale("log")
    ax.set_title("GET/POST latency per interval (s)")
    ax.legend(fontsize=8)
    ax = axes[0][2]
    ax.plot(t, [p["open_streams"] for p in series])
    ax.set_title("open streams (requests in flight)")
    for ax, field, title in ((axes[1][0], "mem_mb", "memory (MB): RSS; Chromium: PSS"),
                             (axes[1][1], "cpu_cores", "CPU (cores)")):
        for name in series[0]["processes"]:
            if name in ("signal",):
                continue
            ax.plot(t, [p["processes"][name][field] for p in series], label=name)
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[1][0].axvline(result["meta"]["warmup_s"] / 60, color="gray", linestyle=":")
    ax = axes[1][2]
    ax.plot(t, [p["loadavg_1m"] for p in series])
    ax.set_title("load average (1 min), 2 cores")
    browsers = [n for n in series[0]["processes"] if n.startswith("chromium")]
    for ax, heap, title in ((axes[2][0], False, "Chromium PSS per process kind (MB)"),
                            (axes[2][1], True, "JS heap used, array buffers (MB)")):
        for name, style in zip(browsers, ("-", "--", ":")):
            names = [k for k in parts(series[-1], name) if (" " in k) == heap]
            for k, color in zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2):
                ax.plot(t, [parts(p, name).get(k) for p in series], style, color=color,
                        label=f"{name} {k}")
        ax.set_title(title)
        ax.legend(fontsize=6)
        ax.axvline(result["meta"]["warmup_s"] / 60, color="gray", linestyle=":")
    ax = axes[2][2]
    for name in browsers:
        served = [p["viewers"][name]["requests"] if name in p["viewers"] else 0 for p in series]
        ax.plot(served, [p["processes"][name]["mem_mb"] for p in series], label=name)
    ax.set_title("Chromium PSS (MB) against its requests served")
    for row in axes:
        for ax in row:
            ax.set_xlabel("minutes")
    axes[2][2].set_xlabel("requests served")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    up = sub.add_parser("upstream")
    up.add_argument("--port", type=int, required=True)
    drv = sub.add_parser("driver")
    drv.add_argument("--base", required=True)
    drv.add_argument("--end-at", type=float, required=True)
    drv.add_argument("--concurrency", type=int, required=True)
    drv.add_argument("--seed", type=int, default=0)
    drv.add_argument("--report-to", type=Path, required=True)
    drv.add_argument("--interval", type=float, default=30.0)
    drv.add_argument("--rate", type=float, default=0.0)
    hp = sub.add_parser("heaps", help="(in the namespace) JS heaps of a browser, one JSON line")
    hp.add_argument("url")
    hp.add_argument("--gc", action="store_true")
    ren = sub.add_parser("render", help="redo bench/soak.png and the table from a results file")
    ren.add_argument("json", type=Path)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between figures")
    parser.add_argument("--warmup", type=float, default=None,
                        help="minutes of warm-up before memory growth is measured "
                             "(default: 5, a sixth of shorter runs; docs/reliability.md)")
    parser.add_argument("--native", type=int, default=3, help="native-client viewers")
    parser.add_argument("--browsers", type=int, default=2, help="Chromium viewers")
    parser.add_argument("--concurrency", type=int, default=100, help="streams per viewer")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests started per second per viewer, all kinds (default 0: "
                             "as fast as they answer); a fixed rate keeps throughput level")
    parser.add_argument("--no-plot", action="store_true", help="leave bench/soak.png as it is")
    args = parser.parse_args()
    if args.role == "upstream":
        upstream(args.port)
        return
    if args.role == "driver":
        asyncio.run(drive(args.base, args.end_at, args.concurrency, args.seed, args.report_to,
                          args.interval, args.rate))
        return
    if args.role == "heaps":
        print(json.dumps(asyncio.run(heaps(args.url, args.gc))))
        return
    if args.role == "render":
        result = json.loads(args.json.read_text())
        plot(result, BENCH / "soak.png")
        print(summary(result))
        return
    from tests.browser.harness import unavailable_reason

    reason = unavailable_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    if args.warmup is None:
        args.warmup = min(5.0, args.minutes / 6)
    result = run(args)
    if not args.no_plot:
        plot(result, BENCH / "soak.png")
    print(summary(result))
    print(f"wrote bench/results/soak-{result['meta']['date']}.json"
          + ("" if args.no_plot else " and bench/soak.png"))


if __name__ == "__main__":
    main()
