"""CPU profiles of Chromium's page and service worker over raw CDP (run INSIDE the namespace).

    python bench/_cdp_profile.py WS_URL OUT_DIR

Attaches to every page and service-worker target of the browser at WS_URL (flat sessions),
starts the V8 sampling profiler in each (100 µs interval), prints "started", waits for a line
on stdin, stops the profilers, writes OUT_DIR/<kind>-<n>.cpuprofile (open them in DevTools'
Performance panel) and prints one JSON line: per target, the self time of the top functions.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

KINDS = ("page", "service_worker")


class Cdp:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            future = self.waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(RuntimeError(str(data["error"])))
                else:
                    future.set_result(data.get("result", {}))

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None) -> Any:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = future
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 60)


def self_times(profile: dict[str, Any], top: int = 25) -> dict[str, Any]:
    """{function@file:line: self ms} of the `top` heaviest, plus the total sampled ms."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    ms: Counter[str] = Counter()
    for node_id, delta in zip(profile["samples"], profile["timeDeltas"]):
        frame = nodes[node_id]["callFrame"]
        url = frame["url"].rsplit("/", 1)[-1]
        name = f"{frame['functionName'] or '(anonymous)'} {url}:{frame['lineNumber'] + 1}" \
            if url else frame["functionName"]
        ms[name] += delta / 1000
    total = sum(ms.values())
    busy = total - ms.get("(idle)", 0.0)
    return {"total_ms": round(total), "busy_ms": round(busy),
            "top": [[k, round(v, 1)] for k, v in ms.most_common(top)]}


async def main(url: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        cdp = Cdp(ws)
        targets = (await cdp.send("Target.getTargets"))["targetInfos"]
        sessions = []
        for t in targets:
            if t["type"] not in KINDS:
                continue
            sid = (await cdp.send("Target.attachToTarget",
                                  {"targetId": t["targetId"], "flatten": True}))["sessionId"]
            await cdp.send("Profiler.enable", session=sid)
            await cdp.send("Profiler.setSamplingInterval", {"interval": 100}, session=sid)
            await cdp.send("Profiler.start", session=sid)
            sessions.append((t, sid))
        print("started", json.dumps([t["type"] + " " + t["url"] for t, _ in sessions]), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        summary = {}
        for n, (t, sid) in enumerate(sessions):
            profile = (await cdp.send("Profiler.stop", session=sid))["profile"]
            name = f"{t['type']}-{n}"
            (out_dir / f"{name}.cpuprofile").write_text(json.dumps(profile))
            summary[f"{name} {t['url']}"] = self_times(profile)
        print(json.dumps(summary), flush=True)
        cdp.reader.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
