"""The browser agent: runs INSIDE the test's network namespace, launches Chromium there and
drives it with Playwright, taking commands as JSON lines on stdin.

Why a separate process: Chromium must run in the namespace (its WebRTC sees only the
namespace's loopback), and its DevTools port is reachable only from inside. The pytest process
stays in the root namespace and talks to this agent over a pipe (tests/browser/harness.py).

Protocol: one JSON object per line each way.
    -> {"id": 1, "op": "call", "target": "page"|"app", "method": "evaluate", "args": [...], "kwargs": {...}}
    <- {"id": 1, "ok": true, "value": ...}   or   {"id": 1, "ok": false, "error": "..."}
Other ops: "new_page" (a fresh browser context: empty storage, no service worker),
"quit". The first line the agent writes is {"ready": true, "chromium_pid": PID}.
Extra Chromium flags (e.g. --host-resolver-rules) come as a JSON list in $PP_CHROMIUM_FLAGS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Download, Frame, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Recipe A of chromium-webrtc.md: ICE over loopback needs both.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--window-size=1100,760",
]
START_TIMEOUT = 30.0
DEFAULT_TIMEOUT_MS = 30_000


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)  # Playwright handles (Response, ElementHandle): their description


def _launch(user_data: str) -> tuple[subprocess.Popen[str], str]:
    log = open(os.environ.get("PP_CHROMIUM_LOG", os.devnull), "a")
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, *json.loads(os.environ.get("PP_CHROMIUM_FLAGS") or "[]"),
         f"--user-data-dir={user_data}", "--remote-debugging-port=0",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.write(line)
        match = re.search(r"DevTools listening on (ws://\S+)", line)
        if match:
            # Keep draining stderr so Chromium never blocks on a full pipe.
            import threading

            def drain() -> None:
                assert proc.stderr is not None
                for rest in proc.stderr:
                    log.write(rest)
                    log.flush()

            threading.Thread(target=drain, daemon=True).start()
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError("Chromium did not start (no DevTools URL on stderr)")


class Agent:
    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.context: BrowserContext | None = None
        self.page: Page | None = None

    def new_page(self) -> None:
        if self.context is not None:
            self.context.close()
        self.context = self.browser.new_context(viewport={"width": 1100, "height": 760})
        self.context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        self.page = self.context.new_page()
        self.downloads: list[Download] = []
        self.page.on("download", lambda download: self.downloads.append(download))

    def target(self, name: str) -> Any:
        if self.page is None:
            raise RuntimeError("no page: send new_page first")
        if name == "page":
            return self.page
        if name == "app":
            # The card leaves at the frame's first response, a moment before its document
            # commits (and Playwright knows the frame): wait for that, bounded. Playwright
            # names a frame by its window.name, which an app may change (Home Assistant's
            # is "ha-main-window"): the frame is the one of the <iframe id="app">.
            for _ in range(100):
                frame = self._app_frame(self.page)
                if frame is not None:
                    return frame
                self.page.wait_for_timeout(50)
            raise RuntimeError("the page has no app frame")
        if name == "context":
            return self.context
        raise RuntimeError(f"unknown target {name!r}")

    @staticmethod
    def _app_frame(page: Page) -> Frame | None:
        frame = page.frame(name="app")
        if frame is not None:
            return frame
        for child in page.main_frame.child_frames:
            if child.frame_element().get_attribute("id") == "app":
                return child
        return None

    def handle(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        if op == "new_page":
            self.new_page()
            return None
        if op == "call":
            method = getattr(self.target(request["target"]), request["method"])
            return _jsonable(method(*request.get("args", []), **request.get("kwargs", {})))
        if op == "service_workers":
            assert self.context is not None
            return [w.url for w in self.context.service_workers]
        if op == "cdp":
            # Raw DevTools commands for the page, in one session (e.g. ServiceWorker.enable,
            # then ServiceWorker.stopAllWorkers); the last one's result.
            assert self.context is not None and self.page is not None
            session = self.context.new_cdp_session(self.page)
            try:
                result = None
                for method, params in request["commands"]:
                    result = session.send(method, params)
                return _jsonable(result)
            finally:
                session.detach()
        if op == "downloads":
            # Every download of this page so far, once finished: name, size, sha256, failure.
            out = []
            for d in self.downloads:
                failure = d.failure()
                data = Path(d.path()).read_bytes() if failure is None else b""
                out.append({"name": d.suggested_filename, "size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest(), "failure": failure})
            return out
        if op == "worker_evaluate":
            # Evaluate in this context's (only) service worker: the cookie jar lives there.
            assert self.context is not None
            workers = self.context.service_workers
            if not workers:
                raise RuntimeError("no service worker in this context")
            return _jsonable(workers[0].evaluate(request["expression"], request.get("arg")))
        raise RuntimeError(f"unknown op {op!r}")


def main() -> None:
    user_data = tempfile.mkdtemp(prefix="pp-chromium-")
    proc, url = _launch(user_data)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.connect_over_cdp(url)
            agent = Agent(browser)
            _reply({"ready": True, "chromium_pid": proc.pid})
            for line in sys.stdin:
                request = json.loads(line)
                if request["op"] == "quit":
                    _reply({"id": request["id"], "ok": True, "value": None})
                    break
                try:
                    value = agent.handle(request)
                    _reply({"id": request["id"], "ok": True, "value": value})
                except Exception as exc:  # report to the test, keep serving
                    _reply({"id": request["id"], "ok": False,
                            "error": f"{type(exc).__name__}: {exc}"})
            try:
                browser.close()
            except Exception:
                pass
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        subprocess.run(["rm", "-rf", user_data], check=False)


if __name__ == "__main__":
    main()
