"""Real apps through the browser client: page loads of Home Assistant, Node-RED and Syncthing,
proxied (the share link: manager page, service worker, data channel, daemon) against the same
app opened directly (http://127.0.0.1:<app port>/) in the same Chromium.

Each app runs in its own BrowserWorld (tests/browser/harness.py: one loopback-only network
namespace with the signaling server, the daemon and Chromium), started and configured by the
real-app tests' helpers (tests/apps/). Per app and path:

- login once (HA: its login page; Node-RED: its login dialog; Syncthing: no GUI password, the
  browser client cannot answer Basic auth), then keep the login: every measured load starts
  with the app's tokens in localStorage (an init script puts them back in a fresh context,
  as a remembered login would);
- `cold`: a fresh browser context (empty HTTP cache; proxied: no service worker yet, a new
  peer connection with signaling, ICE, DTLS and the viewer's auth) opening the URL;
- `warm`: a reload of that page (proxied: the manager page reloads, so a new peer connection
  again, with the worker already installed).

A load is timed from the top page's navigation start (performance.timeOrigin) to the app's
first meaningful element (`probe`, polled every POLL_MS in the app's document by an init
script): HA's entity row on the dashboard, Node-RED's palette and workspace, Syncthing's
"This Device" panel with the device's name. Requests and bytes are the app document's
Resource Timing entries started before that moment (plus the document itself); proxied, the
data channel's own byte counts (RTCDataChannel stats) are the bytes on the wire, and the
connection setup is the top page's navigation start -> the app frame's navigation start.
Runs alternate the path that goes first; figures are min / median over the runs.

    python bench/apps.py                   # every app, 5 runs each: about 5-6 minutes here
    python bench/apps.py --runs 2 --apps red,sync
    python bench/apps.py --trace red       # + a traced load per path and kind (not in figures)
    python bench/apps.py --render bench/results/apps-<stamp>.json   # table and plot again

Writes bench/apps-latest.json (summary and per-run figures), bench/apps.png, and
bench/results/apps-<stamp>.json (every load's waterfall) with the processes' logs in
bench/results/apps-<stamp>/. Needs root (ip netns), Chromium and the apps
(tests/apps/setup_*.sh).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Not bench/ itself on the path: its signal.py would shadow the standard library's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from tests.apps import home_assistant, node_red, syncthing  # noqa: E402
from tests.browser.harness import BrowserWorld, unavailable_reason  # noqa: E402

logger = logging.getLogger("bench.apps")
BENCH = ROOT / "bench"
POLL_MS = 20
LOAD_TIMEOUT_MS = 90_000
TARGET_COLD = 1.5  # issue 15: cold <= 1.5x direct + connection setup
TARGET_WARM = 1.3  # warm reload <= 1.3x direct
HA_PORT = 8123
HA_OWNER = ("Owner", "owner", "porch-light-9")

# Runs in every frame of every document of a measured context (Playwright init script): puts
# the remembered login back, and in the app's own document records when `probe` first holds.
INIT_JS = """(() => {
    const cfg = __CFG__;
    if (location.origin !== cfg.origin) return;
    for (const [key, value] of Object.entries(cfg.storage))
        if (localStorage.getItem(key) === null) localStorage.setItem(key, value);
    const isApp = cfg.proxied
        ? window.parent === window.top && window !== window.top && window.frameElement?.id === 'app'
        : window === window.top;
    if (!isApp) return;
    performance.setResourceTimingBufferSize(10000);
    const probe = __PROBE__;
    const timer = setInterval(() => {
        let ok = false;
        try { ok = probe(); } catch (e) {}
        if (ok) {
            window.__benchHit = performance.timeOrigin + performance.now();
            clearInterval(timer);
        }
    }, __POLL__);
})();
//# sourceURL=bench-probe.js"""

# In the app's document once the probe held: the navigation and every resource entry.
COLLECT_JS = """() => {
    const pick = (e) => ({
        name: e.name, type: e.initiatorType ?? 'navigation', start: e.startTime,
        workerStart: e.workerStart, requestStart: e.requestStart,
        responseStart: e.responseStart, end: e.responseEnd,
        transfer: e.transferSize, encoded: e.encodedBodySize, decoded: e.decodedBodySize,
        status: e.responseStatus, delivery: e.deliveryType,
    });
    return {
        hitAt: window.__benchHit, origin: performance.timeOrigin,
        nav: pick(performance.getEntriesByType('navigation')[0]),
        resources: performance.getEntriesByType('resource').map(pick),
        controlled: !!navigator.serviceWorker?.controller,
    };
}"""

# In the manager page (proxied): its navigation start, channel open, the data channel's bytes.
MANAGER_JS = """async () => {
    const s = window.__peerproxy;
    const out = {origin: performance.timeOrigin, channelOpenAt: s.channelOpenAt,
                 connections: s.connections, dc: null};
    if (s.pc) {
        for (const r of (await s.pc.getStats()).values())
            if (r.type === 'data-channel')
                out.dc = {bytesReceived: r.bytesReceived, bytesSent: r.bytesSent,
                          messagesReceived: r.messagesReceived, messagesSent: r.messagesSent};
    }
    return out;
}"""

HA_PROBE = """() => {
    const find = (root) => {
        for (const el of root.querySelectorAll('*')) {
            if (el.localName === 'ha-entity-toggle'
                && el.stateObj?.entity_id === '%s' && el.shadowRoot?.querySelector('ha-switch'))
                return true;
            if (el.shadowRoot && find(el.shadowRoot)) return true;
        }
        return false;
    };
    return find(document);
}""" % home_assistant.ENTITY

RED_PROBE = """() => !!document.querySelector('.red-ui-palette-node[data-palette-type=inject]')
    && !!document.querySelector('#red-ui-workspace-chart svg')"""

SYNC_PROBE = """() => [...document.querySelectorAll('#device-this')].length > 0
    && [...document.querySelectorAll('.panel-title-text')].some(e => e.textContent.trim() === %s)"""


@dataclass
class App:
    """One app: how to start it, log in once, and know its page is there."""

    key: str
    title: str
    service: str
    port: int
    probe: str
    element: str  # the first meaningful element, in words
    storage: list[str]  # localStorage keys that hold the login
    options: list[str] = field(default_factory=list)
    version: str = ""

    def missing(self) -> str | None:
        raise NotImplementedError

    def start(self, world: BrowserWorld) -> None:
        raise NotImplementedError

    def log_in(self, world: BrowserWorld, frame: Any) -> None:
        """On the app's first page (logged out), in the app's frame (or the page)."""


class HomeAssistant(App):
    def missing(self) -> str | None:
        return home_assistant.missing_install()

    def start(self, world: BrowserWorld) -> None:
        # HA's HTTP client joins a multicast group (zeroconf): tests/apps/test_home_assistant.py.
        world.ns_run("ip", "link", "set", "lo", "multicast", "on")
        world.ns_run("ip", "route", "add", "224.0.0.0/4", "dev", "lo")
        config = home_assistant.write_config(world.log_dir / "ha-config", self.port)
        world.start_cmd("ha", *home_assistant.hass_argv(config))
        api = home_assistant.RestClient(world.ns_run, f"http://127.0.0.1:{self.port}")
        api.wait_ready()
        api.onboard(*HA_OWNER)
        api.wait_state(home_assistant.ENTITY, "off")
        self.version = home_assistant.VERSION

    def log_in(self, world: BrowserWorld, frame: Any) -> None:
        frame.wait_for_selector("input[name=username]", timeout=LOAD_TIMEOUT_MS)
        frame.fill("input[name=username]", HA_OWNER[1])
        frame.fill("input[name=password]", HA_OWNER[2])
        frame.press("input[name=password]", "Enter")


class NodeRed(App):
    def missing(self) -> str | None:
        return node_red.missing()

    def start(self, world: BrowserWorld) -> None:
        node_red.make_user_dir(world.log_dir / "user")
        node_red.start(world, world.log_dir / "user")
        self.version = node_red.version()

    def log_in(self, world: BrowserWorld, frame: Any) -> None:
        frame.wait_for_selector("#node-dialog-login-username", timeout=LOAD_TIMEOUT_MS)
        frame.fill("#node-dialog-login-username", node_red.USER)
        frame.fill("#node-dialog-login-password", node_red.PASSWORD)
        frame.click("#node-dialog-login-submit")


class Syncthing(App):
    def missing(self) -> str | None:
        return syncthing.missing()

    def start(self, world: BrowserWorld) -> None:
        home = world.log_dir / "syncthing-home"
        syncthing.make_home(home)
        # No GUI password: its Basic auth cannot be answered in the app frame (a known limit,
        # tests/apps/test_syncthing.py), and the direct path should not differ.
        tree = ET.parse(home / "config.xml")
        gui = tree.find("gui")
        for tag in ("user", "password"):
            element = gui.find(tag)
            if element is not None:
                gui.remove(element)
        tree.write(home / "config.xml")
        name = syncthing.config_xml(home).find("device").get("name")
        self.probe = SYNC_PROBE % json.dumps(name)
        self.element += f" ({name!r})"
        syncthing.start(world, home)
        self.version = syncthing.version().split()[1]


APPS: dict[str, App] = {
    "ha": HomeAssistant("ha", "Home Assistant", "ha", HA_PORT, HA_PROBE,
                        "the dashboard's entity row (its switch)", ["hassTokens"],
                        ["read_timeout = 30.0"]),
    "red": NodeRed("red", "Node-RED", "red", node_red.PORT, RED_PROBE,
                   "the palette's inject node and the workspace", ["auth-tokens"],
                   ["read_timeout = 60.0"]),
    "sync": Syncthing("sync", "Syncthing", "sync", syncthing.GUI_PORT, "",
                      "the This Device panel's heading with the device name", [],
                      ['host = "upstream"']),
}


def _kind(cmdline: str) -> str:
    """Which part of the world a process is, from its command line."""
    if "chromium" in cmdline.split(" ")[0]:
        match = re.search(r"--type=(\S+)", cmdline)
        kind = match.group(1) if match else "browser"
        if kind == "utility":
            kind = "network" if "NetworkService" in cmdline else "utility"
        return f"chromium-{kind}"
    for needle, kind in (("peerproxyd serve", "daemon"), ("peerproxyd signal", "signal"),
                         ("tests.browser.agent", "agent"), ("run-driver", "agent")):
        if needle in cmdline:
            return kind
    return "app"


class CpuMeter:
    """CPU time of every thread in the world's namespace, by (process kind, thread name), and
    of the whole machine (/proc/stat): what the load cost, and how busy everything else was."""

    def __init__(self, world: BrowserWorld) -> None:
        self.world = world
        self.tick_ms = 1000 / os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> dict[str, Any]:
        threads: dict[tuple[str, str], tuple[str, int]] = {}  # (pid, tid) -> (kind/name, ticks)
        pids = subprocess.run(["ip", "netns", "pids", self.world.ns], capture_output=True,
                              text=True, timeout=30).stdout.split()
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                kind = _kind(cmdline)
                for task in Path(f"/proc/{pid}/task").iterdir():
                    stat = (task / "stat").read_text()
                    name = stat[stat.index("(") + 1 : stat.rindex(")")]
                    fields = stat[stat.rindex(")") + 2 :].split()
                    ticks = int(fields[11]) + int(fields[12])  # utime + stime
                    threads[(pid, task.name)] = (f"{kind}/{name}", ticks)
            except (OSError, ValueError):  # gone meanwhile
                continue
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        busy = sum(int(cpu[i]) for i in (0, 1, 2, 5, 6, 7))  # user nice system irq softirq steal
        return {"wall": time.monotonic(), "busy": busy, "threads": threads}

    def diff(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """{"threads": {kind/thread: ms}, "kinds": {kind: ms}, "other_cores": float}: threads
        that ended in between are not counted (the closed context's, at a cold load's start)."""
        threads: dict[str, float] = {}
        for key, (name, ticks) in after["threads"].items():
            used = (ticks - before["threads"].get(key, (name, 0))[1]) * self.tick_ms
            if used > 0:
                threads[name] = threads.get(name, 0.0) + used
        kinds: dict[str, float] = {}
        for name, ms in threads.items():
            kinds[name.split("/")[0]] = kinds.get(name.split("/")[0], 0.0) + ms
        wall_ms = (after["wall"] - before["wall"]) * 1000
        other = (after["busy"] - before["busy"]) * self.tick_ms - sum(kinds.values())
        return {"threads": threads, "kinds": kinds, "wall_ms": wall_ms,
                "other_cores": max(other, 0.0) / wall_ms if wall_ms else 0.0}


class Loader:
    """Measured loads of one app on both paths, in one world."""

    def __init__(self, world: BrowserWorld, app: App) -> None:
        self.world = world
        self.app = app
        assert world.agent is not None
        self.agent = world.agent
        self.storage: dict[str, dict[str, str]] = {"direct": {}, "proxied": {}}
        self.cpu = CpuMeter(world)

    def url(self, path: str) -> str:
        if path == "direct":
            return f"http://127.0.0.1:{self.app.port}/"
        return self.world.link("/", service=self.app.service)

    def origin(self, path: str) -> str:
        if path == "direct":
            return f"http://127.0.0.1:{self.app.port}"
        return self.world.origin(service=self.app.service)

    def frame(self, path: str) -> Any:
        return self.agent.page if path == "direct" else self.agent.app

    def _context(self, path: str) -> None:
        """A fresh browser context whose documents carry the init script."""
        self.agent.new_page()
        cfg = {"origin": self.origin(path), "storage": self.storage[path],
               "proxied": path == "proxied"}
        script = (INIT_JS.replace("__CFG__", json.dumps(cfg))
                  .replace("__PROBE__", self.app.probe).replace("__POLL__", str(POLL_MS)))
        self.agent.call("context", "add_init_script", script=script)

    def log_in(self, path: str) -> None:
        """Log in once on `path` (a fresh context), keep the login's localStorage keys."""
        self._context(path)
        self.agent.page.goto(self.url(path), wait_until="commit")
        frame = self.frame(path)
        if self.app.storage:
            self.app.log_in(self.world, frame)
        self._wait_hit(path)
        keys = self.app.storage
        self.storage[path] = self.frame(path).evaluate(
            "keys => Object.fromEntries(keys.map(k => [k, localStorage.getItem(k)]))", keys)
        missing = [k for k, v in self.storage[path].items() if v is None]
        if missing:
            raise RuntimeError(f"{self.app.title} ({path}): no {missing} in localStorage "
                               "after the login")

    def _wait_hit(self, path: str) -> None:
        self.frame(path).wait_for_function("() => !!window.__benchHit", timeout=LOAD_TIMEOUT_MS)

    def load(self, path: str, kind: str) -> dict[str, Any]:
        """One cold (fresh context) or warm (reload) load; its figures and waterfall."""
        load_before = os.getloadavg()[0]
        access_before = len(self._access_log())
        cpu_before = self.cpu.snapshot()
        if kind == "cold":
            self._context(path)
            self.agent.page.goto(self.url(path), wait_until="commit")
        else:
            self.agent.page.reload(wait_until="commit")
        self._wait_hit(path)
        cpu = self.cpu.diff(cpu_before, self.cpu.snapshot())
        doc = self.frame(path).evaluate(COLLECT_JS)
        out: dict[str, Any] = {"path": path, "kind": kind, "loadavg": load_before, "cpu": cpu}
        hit_rel = doc["hitAt"] - doc["origin"]  # ms since the app document's navigation start
        before_hit = [r for r in doc["resources"] if r["start"] <= hit_rel]
        entries = [doc["nav"], *before_hit]
        out["requests"] = len(entries)
        out["requests_total"] = 1 + len(doc["resources"])
        out["transfer_bytes"] = sum(e["transfer"] or 0 for e in entries)
        out["encoded_bytes"] = sum(e["encoded"] or 0 for e in entries)
        out["decoded_bytes"] = sum(e["decoded"] or 0 for e in entries)
        if path == "proxied":
            manager = self.agent.page.evaluate(MANAGER_JS)
            top_origin = manager["origin"]
            out["setup_ms"] = doc["origin"] - top_origin
            out["channel_open_ms"] = manager["channelOpenAt"]
            dc = manager["dc"] or {}
            out["channel_bytes"] = (dc.get("bytesReceived") or 0) + (dc.get("bytesSent") or 0)
            out["channel_messages"] = ((dc.get("messagesReceived") or 0)
                                       + (dc.get("messagesSent") or 0))
            out["access"] = self._access_log()[access_before:]
        else:
            top_origin = doc["origin"]
            out["setup_ms"] = 0.0
        out["element_ms"] = doc["hitAt"] - top_origin
        out["app_ms"] = hit_rel
        out["controlled"] = doc["controlled"]
        out["waterfall"] = entries
        return out

    def _access_log(self) -> list[list[Any]]:
        """[method, target, status, bytes, ms] of each request the daemon logged for the app."""
        log = self.world.procs["daemon"].log()
        return [[m, t, int(s), int(b), float(ms)] for m, t, s, b, ms in re.findall(
            rf"access: {self.app.service} (\S+) (\S+) (\d+) (\d+)B ([\d.]+)ms", log)]


def measure(app: App, runs: int, log_dir: Path, trace: bool = False) -> dict[str, Any]:
    """Start the app in its own world, log in on both paths, then `runs` rounds of
    cold + warm loads on both paths (the first path alternating)."""
    reason = app.missing()
    if reason:
        raise SystemExit(reason)
    world = BrowserWorld(log_dir, test_app=False, services={app.service: app.port},
                         service_options={app.service: app.options})
    started = time.monotonic()
    loads: list[dict[str, Any]] = []
    try:
        world.up()
        app.start(world)
        loader = Loader(world, app)
        for path in ("direct", "proxied"):
            logger.info("%s: log in (%s)", app.title, path)
            loader.log_in(path)
        # One unmeasured round: the app's own first-request work (HA renders its index once).
        for path in ("direct", "proxied"):
            loader.load(path, "cold")
        for run in range(runs):
            order = ("direct", "proxied") if run % 2 == 0 else ("proxied", "direct")
            for path in order:
                for kind in ("cold", "warm"):
                    one = loader.load(path, kind)
                    one["run"] = run
                    loads.append(one)
                    logger.info("%s run %d %s %s: %.0f ms (setup %.0f), %d requests",
                                app.title, run, path, kind, one["element_ms"], one["setup_ms"],
                                one["requests"])
        traces: dict[str, Any] = {}
        for path in ("direct", "proxied") if trace else ():
            for kind in ("cold", "warm"):
                tracer = Tracer(world, log_dir / f"trace-{path}-{kind}.json")
                one = loader.load(path, kind)
                traces[f"{path}_{kind}"] = {
                    "element_ms": one["element_ms"], "setup_ms": one["setup_ms"],
                    **tracer.stop(loader.origin(path), one["element_ms"])}
                logger.info("%s traced %s %s: %.0f ms (not in the figures)", app.title, path,
                            kind, one["element_ms"])
        agent = world.agent.page.evaluate("navigator.userAgent")
        chromium = agent.split("Chrome/")[1].split(" ")[0]
        backend = re.search(r"backend[ =:]+(\w+)", world.procs["daemon"].log())
    finally:
        world.down()
    return {"app": app.title, "version": app.version, "element": app.element,
            "chromium": chromium, "backend": backend.group(1) if backend else "?",
            "seconds": round(time.monotonic() - started), "loads": loads, "traces": traces}


# ----------------------------------------------------------------------------- tracing
TRACE_CATEGORIES = ["toplevel", "devtools.timeline", "v8.execute", "blink.user_timing",
                    "disabled-by-default-devtools.timeline", "loading", "netlog", "v8"]


async def _trace_child(ws_url: str, out: Path) -> None:
    """Inside the namespace: a Chromium trace (CDP Tracing on the browser target) from
    "start" until a line on stdin, written to `out` as Trace Event JSON."""
    import asyncio

    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(
        ws_url, max_msg_size=0
    ) as ws:
        events: list[Any] = []
        done = asyncio.Event()
        next_id = 0

        async def send(method: str, params: dict[str, Any]) -> None:
            nonlocal next_id
            next_id += 1
            await ws.send_json({"id": next_id, "method": method, "params": params})

        async def reader() -> None:
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("method") == "Tracing.dataCollected":
                    events.extend(data["params"]["value"])
                elif data.get("method") == "Tracing.tracingComplete":
                    done.set()
                    return

        task = asyncio.create_task(reader())
        await send("Tracing.start", {"transferMode": "ReportEvents", "traceConfig": {
            "includedCategories": TRACE_CATEGORIES, "recordMode": "recordAsMuchAsPossible"}})
        print("started", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
        await send("Tracing.end", {})
        await asyncio.wait_for(done.wait(), 120)
        task.cancel()
        out.write_text(json.dumps({"traceEvents": events}))
        print("done", flush=True)


class Tracer:
    """A Chromium trace of one load, by a CDP client run in the world's namespace."""

    def __init__(self, world: BrowserWorld, out: Path) -> None:
        match = re.search(r"DevTools listening on (ws://\S+)",
                          (world.log_dir / "chromium.log").read_text())
        assert match, "no DevTools URL in chromium.log"
        self.out = out
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", world.ns, sys.executable, str(Path(__file__).resolve()),
             "--trace-child", match.group(1), str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "started"

    def stop(self, origin: str, element_ms: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        self.proc.wait(60)
        if line != "done":
            raise RuntimeError(f"trace child: {line!r}")
        return analyze_trace(json.loads(self.out.read_text())["traceEvents"], origin, element_ms)


def _script_group(url: str) -> str:
    if url.endswith("bench-probe.js"):
        return "this bench's probe"
    if "/__peerproxy/" in url:
        return "client " + url.rsplit("/", 1)[-1].split("?")[0]
    return "app JS" if url else "JS without a script URL"


SELF_TIMED = {
    "FunctionCall": "js", "EvaluateScript": "js", "v8.compile": "js", "v8.compileModule": "js",
    "v8.evaluateModule": "js", "ParseHTML": "parse HTML", "ParseAuthorStyleSheet": "parse CSS",
    "UpdateLayoutTree": "style, layout, paint", "Layout": "style, layout, paint",
    "PrePaint": "style, layout, paint", "Paint": "style, layout, paint",
    "MinorGC": "GC", "MajorGC": "GC",
}


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total / 1000


def analyze_trace(events: list[dict[str, Any]], origin: str, element_ms: float) -> dict[str, Any]:
    """Over the load (the top document's navigationStart + element_ms): busy ms per thread
    (the union of its top-level tasks) and, on the threads of the app's renderer, self ms by
    activity, JS split by script (the client's files, the app's)."""
    names: dict[tuple[int, int], str] = {}
    processes: dict[int, str] = {}
    for e in events:
        if e.get("ph") == "M" and e["name"] == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"]
        elif e.get("ph") == "M" and e["name"] == "process_name":
            processes[e["pid"]] = e["args"]["name"]
    starts = sorted((e["ts"], e["pid"]) for e in events if e["name"] == "navigationStart"
                    and e.get("args", {}).get("data", {}).get("isOutermostMainFrame")
                    and e["args"]["data"].get("documentLoaderURL", "").startswith(origin))
    if not starts:
        return {"error": f"no navigationStart of {origin} in the trace"}
    t0, renderer = starts[0]
    t1 = t0 + element_ms * 1000
    tasks: dict[str, list[tuple[float, float]]] = {}
    timed: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for e in events:
        if e.get("ph") != "X" or "dur" not in e or e["ts"] >= t1 or e["ts"] + e["dur"] <= t0:
            continue
        thread = names.get((e["pid"], e["tid"]), str(e["tid"]))
        if e["name"] in ("ThreadControllerImpl::RunTask", "RunTask"):
            proc = "app renderer" if e["pid"] == renderer else processes.get(e["pid"], "?")
            tasks.setdefault(f"{proc}/{thread}", []).append(
                (max(e["ts"], t0), min(e["ts"] + e["dur"], t1)))
        elif e["name"] in SELF_TIMED and e["pid"] == renderer:
            timed.setdefault((e["pid"], e["tid"]), []).append(e)
    busy = {k: round(_union_ms(v), 1) for k, v in tasks.items()}
    busy = dict(sorted(busy.items(), key=lambda kv: -kv[1])[:10])
    activity: dict[str, float] = {}
    for (pid, tid), evs in timed.items():
        thread = names.get((pid, tid), str(tid))
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict[str, Any]] = []
        for e in evs:  # self time: minus the timed events nested in it
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            e["_self"] = e["dur"]
            e["_parent"] = stack[-1] if stack else None
            if stack:
                stack[-1]["_self"] -= e["dur"]
            stack.append(e)
        for e in evs:
            kind = SELF_TIMED[e["name"]]
            if kind == "js":
                url, up = "", e
                while up is not None and not url:
                    data = up.get("args", {}).get("data", {})
                    url = data.get("url") or up.get("args", {}).get("fileName") or ""
                    up = up["_parent"]
                kind = _script_group(url)
            key = f"{thread}: {kind}"
            activity[key] = activity.get(key, 0.0) + max(e["_self"], 0) / 1000
    activity = {k: round(v, 1) for k, v in sorted(activity.items(), key=lambda kv: -kv[1])
                if v >= 1}
    return {"busy_ms": busy, "activity_ms": activity}


# ----------------------------------------------------------------------------- summary
FIGURES = ("element_ms", "requests", "transfer_bytes", "encoded_bytes", "decoded_bytes",
           "setup_ms", "app_ms", "channel_bytes", "channel_messages")
CPU_GROUPS = ("renderer", "worker", "chromium", "daemon", "app", "other_cores")


def cpu_groups(cpu: dict[str, Any]) -> dict[str, float]:
    """A load's CPU ms in a few groups: the renderer of the app's (and manager's) origin
    without its service-worker thread, that thread, the rest of Chromium (browser, network
    service, GPU), the daemon, the app; and the cores other processes used meanwhile."""
    threads = cpu["threads"]
    worker = sum(v for k, v in threads.items() if k.startswith("chromium-renderer/ServiceWorker"))
    kinds = cpu["kinds"]
    return {
        "renderer": kinds.get("chromium-renderer", 0.0) - worker,
        "worker": worker,
        "chromium": sum(v for k, v in kinds.items() if k.startswith("chromium-")
                        and k != "chromium-renderer"),
        "daemon": kinds.get("daemon", 0.0) + kinds.get("signal", 0.0),
        "app": kinds.get("app", 0.0),
        "other_cores": cpu["other_cores"],
    }


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Per path and kind: min / median of each figure; and the issue 15 targets."""
    out: dict[str, Any] = {}
    for path in ("direct", "proxied"):
        for kind in ("cold", "warm"):
            loads = [x for x in result["loads"] if x["path"] == path and x["kind"] == kind]
            fig: dict[str, Any] = {}
            for name in FIGURES:
                values = [x[name] for x in loads if x.get(name) is not None]
                if values:
                    fig[name] = {"min": min(values), "median": statistics.median(values),
                                 "all": values}
            fig["loadavg"] = [x["loadavg"] for x in loads]
            fig["cpu_ms"] = {g: statistics.median(cpu_groups(x["cpu"])[g] for x in loads)
                             for g in CPU_GROUPS}
            out[f"{path}_{kind}"] = fig
    dc, dw = out["direct_cold"]["element_ms"]["median"], out["direct_warm"]["element_ms"]["median"]
    pc = out["proxied_cold"]["element_ms"]["median"]
    pw = out["proxied_warm"]["element_ms"]["median"]
    setup = out["proxied_cold"]["setup_ms"]["median"]
    by_run: dict[tuple[int, str, str], float] = {}
    setups: dict[tuple[int, str], float] = {}
    for x in result["loads"]:
        by_run[(x["run"], x["path"], x["kind"])] = x["element_ms"]
        if x["path"] == "proxied":
            setups[(x["run"], x["kind"])] = x["setup_ms"]
    runs = sorted({x["run"] for x in result["loads"]})
    cold_met = sum(by_run[(r, "proxied", "cold")]
                   <= TARGET_COLD * by_run[(r, "direct", "cold")] + setups[(r, "cold")]
                   for r in runs)
    warm_met = sum(by_run[(r, "proxied", "warm")] <= TARGET_WARM * by_run[(r, "direct", "warm")]
                   for r in runs)
    out["targets"] = {
        "cold": {"proxied_ms": pc, "limit_ms": TARGET_COLD * dc + setup,
                 "runs_met": cold_met, "runs": len(runs),
                 "ratio_without_setup": (pc - setup) / dc, "met": pc <= TARGET_COLD * dc + setup},
        "warm": {"proxied_ms": pw, "limit_ms": TARGET_WARM * dw, "ratio": pw / dw,
                 "runs_met": warm_met, "runs": len(runs),
                 "met": pw <= TARGET_WARM * dw,
                 "ratio_without_setup": (pw - out["proxied_warm"]["setup_ms"]["median"]) / dw},
    }
    return out


def _kb(n: float) -> str:
    return f"{n / 1000:,.0f}"


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"Run of {meta['date']} ({meta['runs']} runs per app, commit {meta['commit']}; "
        f"Chromium {meta['chromium']}, daemon backend {meta['backend']}; load average "
        f"{meta['loadavg_min']:.1f}-{meta['loadavg_max']:.1f} on {meta['cores']} cores). "
        "min / median of the runs; KB = 1000 bytes.",
        "",
        "| app | load | path | to element ms | of which setup ms | requests | KB (body) "
        "| KB on the wire |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, res in results.items():
        s = res["summary"]
        for kind in ("cold", "warm"):
            for path in ("direct", "proxied"):
                f = s[f"{path}_{kind}"]

                def mm(name: str, fmt: Callable[[float], str] = lambda v: f"{v:.0f}") -> str:
                    if name not in f:
                        return "-"
                    return f"{fmt(f[name]['min'])} / {fmt(f[name]['median'])}"

                wire = mm("transfer_bytes" if path == "direct" else "channel_bytes", _kb)
                lines.append(
                    f"| {res['app']} | {kind} | {path} | {mm('element_ms')} "
                    f"| {mm('setup_ms') if path == 'proxied' else '-'} | {mm('requests')} "
                    f"| {mm('decoded_bytes', _kb)} | {wire} |")
    lines += ["", "CPU per load, from its start to the element (median ms; `/proc`, 10 ms ticks): "
              "the renderer of the app's origin (proxied: app frame and manager page share it) "
              "without its service-worker thread, that thread, the rest of Chromium, "
              "daemon + signaling server, the app; and how many cores other processes on the "
              "machine used meanwhile.", "",
              "| app | load | path | renderer | worker | rest of Chromium | daemon | app "
              "| others' cores |", "|---|---|---|---|---|---|---|---|---|"]
    for res in results.values():
        for kind in ("cold", "warm"):
            for path in ("direct", "proxied"):
                c = res["summary"][f"{path}_{kind}"]["cpu_ms"]
                lines.append(f"| {res['app']} | {kind} | {path} | {c['renderer']:.0f} "
                             f"| {c['worker']:.0f} | {c['chromium']:.0f} | {c['daemon']:.0f} "
                             f"| {c['app']:.0f} | {c['other_cores']:.2f} |")
    lines += ["", "Issue 15 targets on the medians (and run by run, each run's proxied load "
              "against its own direct load):", "",
              "| app | cold: proxied vs 1.5 x direct + setup | warm: proxied vs 1.3 x direct |",
              "|---|---|---|"]
    for res in results.values():
        t = res["summary"]["targets"]
        c, w = t["cold"], t["warm"]
        lines.append(
            f"| {res['app']} | {c['proxied_ms']:.0f} vs {c['limit_ms']:.0f} ms: "
            f"**{'met' if c['met'] else 'missed'}** "
            f"(without setup {c['ratio_without_setup']:.2f}x direct; met in "
            f"{c['runs_met']} of {c['runs']} runs) "
            f"| {w['proxied_ms']:.0f} vs {w['limit_ms']:.0f} ms: "
            f"**{'met' if w['met'] else 'missed'}** ({w['ratio']:.2f}x; without setup "
            f"{w['ratio_without_setup']:.2f}x; met in {w['runs_met']} of {w['runs']} runs) |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.8), squeeze=False)
    for ax, res in zip(axes[0], results.values()):
        s = res["summary"]
        xs = [0, 1, 3, 4]
        keys = ["direct_cold", "proxied_cold", "direct_warm", "proxied_warm"]
        med = [s[k]["element_ms"]["median"] for k in keys]
        setup = [s[k].get("setup_ms", {}).get("median", 0.0) for k in keys]
        colors = ["tab:gray", "tab:blue", "tab:gray", "tab:blue"]
        ax.bar(xs, [m - u for m, u in zip(med, setup)], bottom=setup, color=colors)
        ax.bar(xs, setup, color="tab:orange")
        top = 0.0
        for x, k in zip(xs, keys):
            runs = s[k]["element_ms"]["all"]
            top = max(top, *runs)
            ax.scatter([x] * len(runs), runs, color="black", s=8, zorder=3)
        t = s["targets"]
        ax.hlines([t["cold"]["limit_ms"], t["warm"]["limit_ms"]], [0.55, 3.55], [1.45, 4.45],
                  colors="tab:red", linestyles="--", zorder=4)
        ax.set_ylim(0, top * 1.3)
        ax.set_xticks(xs, ["direct\ncold", "proxied\ncold", "direct\nwarm", "proxied\nwarm"])
        ax.set_title(f"{res['app']} {res['version']}")
        ax.set_ylabel("ms to the first meaningful element")
    handles = [Patch(color="tab:gray", label="direct"),
               Patch(color="tab:blue", label="proxied: the app's part"),
               Patch(color="tab:orange", label="proxied: connection setup"),
               Line2D([], [], color="black", marker="o", linestyle="", markersize=3,
                      label="each run (bars: median)"),
               Line2D([], [], color="tab:red", linestyle="--", label="issue 15 target")]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=90)


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=ROOT)
    return out.stdout.strip() or "?"


def render(saved: dict[str, Any], out_dir: Path) -> str:
    """Table (returned) and plot of a run; for a full run also bench/apps-latest.json."""
    results = saved["results"]
    for res in results.values():
        res["summary"] = summarize(res)
    plot(results, out_dir / "apps.png")
    if out_dir == BENCH:
        latest = {"meta": saved["meta"], "results": {
            k: {**{n: v for n, v in r.items() if n != "loads"},
                "loads": [{**{n: v for n, v in x.items()
                              if n not in ("waterfall", "access", "cpu")},
                           "cpu_ms": cpu_groups(x["cpu"])} for x in r["loads"]]}
            for k, r in results.items()}}
        (BENCH / "apps-latest.json").write_text(json.dumps(latest, indent=1))
    return markdown(results, saved["meta"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--apps", default="ha,red,sync", help="comma-separated: ha, red, sync")
    parser.add_argument("--render", metavar="JSON", help="only redo the table and plot")
    parser.add_argument("--trace", default="", metavar="APPS",
                        help="after the runs, trace one load of each kind (not in the figures)")
    parser.add_argument("--trace-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trace_child:
        import asyncio

        asyncio.run(_trace_child(args.trace_child[0], Path(args.trace_child[1])))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        full = set(saved["results"]) == set(APPS) and saved["meta"]["runs"] >= 5
        print(render(saved, BENCH if full else Path(args.render).with_suffix("")))
        return
    reason = unavailable_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    keys = [k.strip() for k in args.apps.split(",")]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_dir = BENCH / "results" / f"apps-{stamp}"
    results: dict[str, Any] = {}
    for key in keys:
        app = APPS[key]
        (log_dir / key).mkdir(parents=True, exist_ok=True)
        logger.info("%s: starting", app.title)
        results[key] = measure(app, args.runs, log_dir / key, trace=key in args.trace.split(","))
    loads = [x["loadavg"] for r in results.values() for x in r["loads"]]
    first = next(iter(results.values()))
    meta = {"date": stamp, "runs": args.runs, "commit": _commit(), "chromium": first["chromium"],
            "backend": first["backend"], "cores": os.cpu_count(), "machine": platform.machine(),
            "loadavg_min": min(loads), "loadavg_max": max(loads)}
    saved = {"meta": meta, "results": results}
    full = BENCH / "results" / f"apps-{stamp}.json"
    full.write_text(json.dumps(saved, indent=1))
    complete = set(keys) == set(APPS) and args.runs >= 5
    print(render(saved, BENCH if complete else log_dir))
    print(f"all loads: {full}")


if __name__ == "__main__":
    main()
