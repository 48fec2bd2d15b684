"""Transfers in flight through a viewer's local port, for the fault matrix
(tests/test_fault_matrix.py): concurrent downloads of random bodies and a paced upload, each
ending `complete` (200, sha256 identical), `error` (an HTTP error status with a message, or a
connection cut with one, after intact bytes only), `hung` (no end within the run's timeout) or
`corrupt` (anything else: a 200 whose body differs, a body cut short that its framing presents
as whole). `probe`: GET / until it answers.

A process of its own, so a test can run it inside a network namespace:

    python -m tests.support.transfers run URL SPECS_JSON TIMEOUT  # "in flight", then outcomes
    python -m tests.support.transfers probe URL TIMEOUT           # {"ok_at": ..., "attempts": ...}

Times are `time.monotonic()`, one clock for every process on the machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

import aiohttp

from tests.support.upstream_app import CHUNK, random_body

IN_FLIGHT = "in flight"
"""Printed once every transfer has moved its first chunk."""
TIMEOUT = "TIMEOUT:"


@dataclass(frozen=True)
class Transfer:
    """A GET of /download (random_body(seed, size), paced at `rate` bytes a second by the
    upstream; `chunked`: no Content-Length) or a POST of the same body to /upload (paced here)."""

    name: str
    method: str
    size: int
    seed: int
    rate: int
    chunked: bool = False

    def target(self) -> str:
        if self.method == "POST":
            return "/upload"
        return (f"/download?size={self.size}&seed={self.seed}&rate={self.rate}"
                f"{'&chunked=1' if self.chunked else ''}")


@dataclass
class Outcome:
    name: str
    status: int = 0  # 0: no response head
    size: int = 0  # body bytes received (a POST: as the upstream counted them)
    error: str = ""  # the message the HTTP client got when the exchange broke off
    text: str = ""  # the body of an error status
    intact: bool = True  # every byte received is the expected one
    complete: bool = False  # 200, and the whole body with its sha256
    seconds: float = 0.0
    verdict: str = field(default="")

    def judge(self) -> Outcome:
        if self.complete:
            self.verdict = "complete"
        elif self.error.startswith(TIMEOUT):
            self.verdict = "hung"  # an error, but only after the user gave up waiting
        elif self.intact and (self.error or (self.status >= 400 and self.text.strip())):
            self.verdict = "error"
        else:
            self.verdict = "corrupt"
        return self


async def _download(http: aiohttp.ClientSession, url: str, t: Transfer, body: bytes,
                    moved: asyncio.Event, out: Outcome) -> None:
    digest = hashlib.sha256()
    async with http.get(url + t.target()) as r:
        out.status = r.status
        if r.status != 200:
            out.text = (await r.text())[:300]
            return
        async for chunk in r.content.iter_any():
            if body[out.size:out.size + len(chunk)] != chunk:
                out.intact = False
            digest.update(chunk)
            out.size += len(chunk)
            moved.set()
    out.complete = out.size == t.size and digest.digest() == hashlib.sha256(body).digest()


async def _upload(http: aiohttp.ClientSession, url: str, t: Transfer, body: bytes,
                  moved: asyncio.Event, out: Outcome) -> None:

    async def paced() -> AsyncIterator[bytes]:
        started = time.monotonic()
        for at in range(0, len(body), CHUNK):
            yield body[at:at + CHUNK]
            moved.set()
            ahead = (at + CHUNK) / t.rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    # No Content-Length: a body cut short shows only in its chunked framing.
    async with http.post(url + t.target(), data=paced()) as r:
        out.status = r.status
        if r.status != 200:
            out.text = (await r.text())[:300]
            return
        got = await r.json()
    out.size = int(got["size"])
    out.complete = (out.size, got["sha256"]) == (t.size, hashlib.sha256(body).hexdigest())
    out.intact = out.complete


async def _one(http: aiohttp.ClientSession, url: str, t: Transfer, moved: asyncio.Event,
               timeout: float) -> Outcome:
    body = random_body(t.seed, t.size)
    out = Outcome(t.name)
    started = time.monotonic()
    exchange = _upload if t.method == "POST" else _download
    try:
        async with asyncio.timeout(timeout):
            await exchange(http, url, t, body, moved, out)
    except TimeoutError:
        out.error = f"{TIMEOUT} no end within {timeout:g} s"
    except (aiohttp.ClientError, OSError) as exc:
        out.error = f"{type(exc).__name__}: {exc}".strip()
    out.seconds = round(time.monotonic() - started, 2)
    return out.judge()


async def run(url: str, transfers: list[Transfer], timeout: float) -> list[Outcome]:
    """All `transfers` at once; IN_FLIGHT is printed when each has moved a chunk."""
    moved = [asyncio.Event() for _ in transfers]

    async def announce() -> None:
        await asyncio.gather(*(m.wait() for m in moved))
        print(IN_FLIGHT, flush=True)

    announcer = asyncio.create_task(announce())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        outcomes = await asyncio.gather(
            *(_one(http, url, t, m, timeout) for t, m in zip(transfers, moved, strict=True)))
    announcer.cancel()
    return list(outcomes)


async def probe(url: str, timeout: float) -> dict[str, object]:
    """GET `url`/ until it answers 200 "hello from ..."; when it did (`ok_at`, or None) and
    when the probe began (`started_at`)."""
    started = time.monotonic()
    deadline = started + timeout
    attempts, last = 0, ""
    async with aiohttp.ClientSession() as http:
        while (left := deadline - time.monotonic()) > 0:
            attempts += 1
            try:
                async with http.get(url + "/", timeout=aiohttp.ClientTimeout(
                        total=min(left, 10.0))) as r:
                    text = await r.text()
                if r.status == 200 and text.startswith("hello from"):
                    return {"ok_at": time.monotonic(), "started_at": started, "attempts": attempts}
                last = f"{r.status} {text.strip()[:200]}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.1)
    return {"ok_at": None, "started_at": started, "attempts": attempts, "last": last}


def main() -> None:
    command, url, *rest = sys.argv[1:]
    if command == "run":
        transfers = [Transfer(**spec) for spec in json.loads(rest[0])]
        outcomes = asyncio.run(run(url, transfers, float(rest[1])))
        print(json.dumps([asdict(o) for o in outcomes]), flush=True)
    elif command == "probe":
        print(json.dumps(asyncio.run(probe(url, float(rest[0])))), flush=True)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
