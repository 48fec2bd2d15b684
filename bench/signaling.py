"""Signaling benchmark: registrations/s, offer->answer round trips/s, memory per device.

Three configurations, each of real `run_signaling()` processes under uvloop (as `peerproxyd
signal` runs) on loopback ports, fresh for every measurement:

    memory    one instance, state in memory (the default)
    redis-1   one instance with --redis (a real redis-server started here)
    redis-3   three instances sharing that Redis; every viewer sits on another instance
              than the devices it calls, so every offer and answer crosses Redis pub/sub

The peers are bare signaling clients (aiohttp WebSockets speaking peerproxyd/signaling/messages.py,
no WebRTC) in this process, spread over 16 loopback source addresses (127.0.0.2-17) so the
shared per-address rate limit sees 16 clients, not one. Devices answer every offer at once
with a ~2.5 KB SDP-sized answer.

    python bench/signaling.py            # full, about 3 minutes
    python bench/signaling.py --quick    # under a minute, smaller counts

Results, with per-process CPU seconds, go to bench/results/signal-<timestamp>.json
(gitignored) and the logs to bench/results/signal-<timestamp>/. Figures: bench/README.md ("Signaling").
"""

from __future__ import annotations

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from peerproxyd.trust.identity import Identity  # noqa: E402
from tests.support.procs import Proc, free_port, python  # noqa: E402

BENCH = ROOT / "bench"
SOURCES = [f"127.0.0.{i}" for i in range(2, 18)]
SDP = "v=0\r\n" + "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n" * 42
NO_LIMIT = {"rate": 1e6, "burst": 1_000_000}
"""Per-connection limits out of the way: one viewer sends hundreds of offers a second."""
CLIENT_LIMITS = {"client_rate": 1e6, "client_burst": 100}
"""Per-address limit in Redis: never reached, but each instance takes tokens 10 at a time
from Redis, as it would with the default 20/s, burst 100."""
MAX_LOOPS = 10_000_000
RSS_TARGET_MB = 200.0
REDIS_SHARE_TARGET = 0.70
_IDENTITIES: list[Identity] = []


def identities(count: int) -> list[Identity]:
    """`count` device identities, made once per run (key generation is not what we measure)."""
    while len(_IDENTITIES) < count:
        _IDENTITIES.append(Identity.generate())
    return _IDENTITIES[:count]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_instance(spec: dict[str, Any]) -> None:
    """One signaling instance (`--instance JSON`), in its own process."""
    import logging

    import uvloop

    from peerproxyd.signaling.server import run_signaling

    raise_fd_limit()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    kwargs: dict[str, Any] = {"rate": spec["rate"], "burst": spec["burst"]}
    if spec.get("redis_url"):
        from peerproxyd.signaling.redis import RedisOptions  # not imported without Redis

        kwargs["redis_url"] = spec["redis_url"]
        kwargs["redis_options"] = RedisOptions(**spec["options"])
    uvloop.run(run_signaling("127.0.0.1", spec["port"], **kwargs))


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds used, resident KiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return cpu, rss


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Setup:
    """Redis (if any) and the instances of one configuration."""

    name: str
    log_dir: Path
    redis_port: int | None
    instances: list[tuple[Proc, int]] = field(default_factory=list)
    redis_proc: Proc | None = None

    async def start(self, count: int) -> None:
        if self.redis_port is not None:
            binary = shutil.which("redis-server")
            if binary is None:
                raise SystemExit("redis-server is not installed (apt-get install redis-server)")
            self.redis_proc = Proc(f"{self.name}-redis", [
                binary, "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
                "--appendonly", "no"], self.log_dir)
            self.redis_proc.wait_for_log("Ready to accept connections", timeout=10)
        for i in range(count):
            port = free_port()
            options: dict[str, Any] = {}
            spec: dict[str, Any] = {"port": port, **NO_LIMIT, "options": options}
            if self.redis_port is not None:
                spec["redis_url"] = f"redis://127.0.0.1:{self.redis_port}/0"
                options.update(CLIENT_LIMITS)
            proc = Proc(f"{self.name}-{i}", python(__file__, "--instance", json.dumps(spec)),
                        self.log_dir)
            self.instances.append((proc, port))
        await asyncio.gather(*(wait_healthy(port) for _, port in self.instances))

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}/ws" for _, port in self.instances]

    def pids(self) -> dict[str, int]:
        pids = {f"instance-{i}": proc.pid for i, (proc, _) in enumerate(self.instances)}
        if self.redis_proc is not None:
            pids["redis"] = self.redis_proc.pid
        return pids

    async def redis_memory(self) -> int:
        import redis.asyncio as aioredis

        assert self.redis_port is not None
        client = aioredis.Redis(port=self.redis_port)
        try:
            info = await client.info("memory")
            return int(info["used_memory"])
        finally:
            await client.aclose()

    def stop(self) -> None:
        for proc, _ in self.instances:
            proc.stop()
        if self.redis_proc is not None:
            self.redis_proc.stop()


async def wait_healthy(port: int, timeout: float = 20.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        for _ in range(int(timeout / 0.05) + 1):
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    raise RuntimeError(f"instance on port {port} did not come up")


async def _read_until_closed(ws: Any) -> None:
    for _ in range(MAX_LOOPS):
        if (await ws.receive()).type.name in ("CLOSE", "CLOSING", "CLOSED", "ERROR"):
            return


async def registered_devices(port: int) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
            return int((await r.json())["devices"])


class Peers:
    """Bare signaling WebSockets, spread over the loopback source addresses."""

    def __init__(self) -> None:
        import aiohttp

        self.sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(a, 0)))
            for a in SOURCES
        ]
        self.sockets: list[Any] = []
        self.readers: list[asyncio.Task[None]] = []

    async def connect_hello(self, url: str, i: int) -> Any:
        ws = await self.sessions[i % len(self.sessions)].ws_connect(url, max_msg_size=0)
        self.sockets.append(ws)
        return ws, json.loads((await ws.receive(timeout=30)).data)

    async def connect(self, url: str, i: int) -> Any:
        ws, hello = await self.connect_hello(url, i)
        return ws, hello["id"]

    async def register(self, url: str, i: int, identity: Identity) -> Any:
        """A device connection: it signs its hello's challenge (docs/security.md 1.2)."""
        ws, hello = await self.connect_hello(url, i)
        device_id = identity.device_id
        await ws.send_str(json.dumps({"type": "register",
                                      **identity.register_fields(hello["challenge"])}))
        for _ in range(10):
            reply = json.loads((await ws.receive(timeout=60)).data)
            if reply["type"] == "registered":
                # Keep reading, so aiohttp answers the server's heartbeat pings: a device
                # that never reads is dropped after 45 s and would flatter the memory figure.
                self.readers.append(asyncio.create_task(_read_until_closed(ws)))
                return ws
            if reply["type"] == "error":
                raise RuntimeError(f"registration of {device_id} refused: {reply}")
        raise RuntimeError(f"no registration reply for {device_id}")

    async def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        for session in self.sessions:
            await session.close()


async def register_many(peers: Peers, urls: list[str], count: int, concurrency: int) -> float:
    """Register `count` devices round-robin over `urls`; registrations per second."""
    gate = asyncio.Semaphore(concurrency)
    devices = identities(count)

    async def one(i: int) -> None:
        async with gate:
            await peers.register(urls[i % len(urls)], i, devices[i])

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


async def measure_registrations(setup: Setup, count: int, concurrency: int) -> dict[str, Any]:
    peers = Peers()
    try:
        before = {n: proc_stat(p)[0] for n, p in setup.pids().items()}
        cpu0 = self_cpu()
        rate = await register_many(peers, setup.urls, count, concurrency)
        cpu = {n: proc_stat(p)[0] - before[n] for n, p in setup.pids().items()}
        cpu["load generator"] = self_cpu() - cpu0
    finally:
        await peers.close()
    return {"registrations_per_s": rate, "count": count, "cpu_s": cpu}


async def measure_offers(setup: Setup, devices: int, viewers: int, seconds: float,
                         warmup: float) -> dict[str, Any]:
    """Viewers send offers in a closed loop (one outstanding each); devices answer."""
    urls = setup.urls
    peers = Peers()
    loop = asyncio.get_running_loop()
    answer_payload = json.dumps({"sdp": SDP.replace("candidate:1", "candidate:2")})
    stop_at = 0.0
    latencies: list[float] = []
    errors = 0

    async def device(ws: Any) -> None:
        for _ in range(MAX_LOOPS):
            msg = await ws.receive()
            if not isinstance(msg.data, str):
                return
            if msg.data.startswith('{"type":"offer"'):
                sender = json.loads(msg.data)["from"]
                await ws.send_str(f'{{"type":"answer","to":"{sender}","payload":{answer_payload}}}')

    async def viewer(ws: Any, targets: list[str], window: tuple[float, float]) -> None:
        nonlocal errors
        offer_payload = json.dumps({"sdp": SDP})
        for i in range(MAX_LOOPS):
            started = loop.time()
            if started >= stop_at:
                return
            to = targets[i % len(targets)]
            await ws.send_str(f'{{"type":"offer","to":"{to}","payload":{offer_payload}}}')
            msg = await ws.receive(timeout=30)
            done = loop.time()
            if not isinstance(msg.data, str) or not msg.data.startswith('{"type":"answer"'):
                errors += 1
                continue
            if window[0] <= started and done <= window[1]:
                latencies.append(done - started)

    try:
        keys = identities(devices)
        device_ids = [k.device_id for k in keys]
        homes = {d: d % len(urls) for d in range(devices)}
        device_ws = await asyncio.gather(*(
            peers.register(urls[homes[d]], d, keys[d]) for d in range(devices)))
        viewer_ws = []
        targets = []
        for v in range(viewers):
            home = v % len(urls)
            ws, _ = await peers.connect(urls[home], v)
            viewer_ws.append(ws)
            mine = [device_ids[d] for d in range(devices)
                    if len(urls) == 1 or homes[d] != home]
            targets.append(mine[v % len(mine):] + mine[:v % len(mine)])
        start = loop.time()
        window = (start + warmup, start + warmup + seconds)
        stop_at = window[1]
        device_tasks = [asyncio.create_task(device(ws)) for ws in device_ws]
        viewer_tasks = [asyncio.create_task(viewer(ws, t, window))
                        for ws, t in zip(viewer_ws, targets)]
        await asyncio.sleep(warmup)
        before = {n: proc_stat(p)[0] for n, p in setup.pids().items()}
        cpu0 = self_cpu()
        await asyncio.sleep(seconds)
        cpu = {n: proc_stat(p)[0] - before[n] for n, p in setup.pids().items()}
        cpu["load generator"] = self_cpu() - cpu0
        await asyncio.wait_for(asyncio.gather(*viewer_tasks), timeout=60)
        for task in device_tasks:
            task.cancel()
        await asyncio.gather(*device_tasks, return_exceptions=True)
    finally:
        await peers.close()
    latencies.sort()
    return {
        "round_trips_per_s": len(latencies) / seconds,
        "errors": errors,
        "latency_ms_p50": 1000 * statistics.median(latencies) if latencies else None,
        "latency_ms_p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))]
        if latencies else None,
        "devices": devices,
        "viewers": viewers,
        "seconds": seconds,
        "cpu_s": cpu,
    }


async def measure_memory(setup: Setup, count: int) -> dict[str, Any]:
    """Resident memory of the single instance before and after `count` registrations."""
    pid = setup.instances[0][0].pid
    peers = Peers()
    try:
        await asyncio.sleep(0.5)
        _, before_kib = proc_stat(pid)
        redis_before = await setup.redis_memory() if setup.redis_port else 0
        rate = await register_many(peers, setup.urls, count, concurrency=200)
        await asyncio.sleep(2.0)  # let the last handlers settle
        _, after_kib = proc_stat(pid)
        live = await registered_devices(setup.instances[0][1])
        if live != count:
            raise RuntimeError(f"{live} of {count} devices still registered: the figure "
                               "would not be per registered device")
        redis_after = await setup.redis_memory() if setup.redis_port else 0
        status = Path(f"/proc/{pid}/status").read_text()
        peak = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:"))
    finally:
        await peers.close()
    result = {
        "devices": count,
        "rss_before_mb": before_kib / 1024,
        "rss_after_mb": after_kib / 1024,
        "rss_peak_mb": peak / 1024,
        "per_device_kb": (after_kib - before_kib) / count,
        "registrations_per_s": rate,
    }
    if setup.redis_port:
        result["redis_per_device_bytes"] = (redis_after - redis_before) / count
    return result


CONFIGS = {"memory": (False, 1), "redis-1": (True, 1), "redis-3": (True, 3)}


async def with_setup(name: str, log_dir: Path, what: Any) -> dict[str, Any]:
    redis, count = CONFIGS[name]
    setup = Setup(name, log_dir, free_port() if redis else None)
    try:
        await setup.start(count)
        result: dict[str, Any] = await what(setup)
        return result
    finally:
        setup.stop()


async def main_async(args: argparse.Namespace) -> int:
    raise_fd_limit()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = BENCH / "results"
    log_dir = out_dir / f"signal-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    reg_count = 300 if quick else 2000
    seconds, warmup = (3.0, 1.0) if quick else (8.0, 2.0)
    memory_devices = 2000 if quick else 10_000
    parts = args.part or ["registrations", "offers", "memory"]
    results: dict[str, Any] = {
        "when": stamp,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_average": os.getloadavg()},
        "quick": quick,
        "viewers": args.viewers,
    }

    def show(label: str, value: Any) -> None:
        print(f"{label:<52} {value}", flush=True)

    for name in CONFIGS:
        results[name] = {}
        if "registrations" in parts:
            reg = await with_setup(name, log_dir, lambda s: measure_registrations(
                s, reg_count, 50))
            show(f"{name}: registrations/s (signed challenge, ECDSA P-256)",
                 f"{reg['registrations_per_s']:.0f}")
            results[name]["registrations"] = reg
        if "offers" in parts:
            offers = await with_setup(name, log_dir, lambda s: measure_offers(
                s, devices=20, viewers=args.viewers, seconds=seconds, warmup=warmup))
            rate = offers["round_trips_per_s"]
            cpu = offers["cpu_s"]
            server_cpu = sum(v for k, v in cpu.items() if k != "load generator")
            offers["server_cpu_ms_per_round_trip"] = 1000 * server_cpu / max(1, rate * seconds)
            show(f"{name}: offer->answer round trips/s", f"{rate:.0f} "
                 f"(p50 {offers['latency_ms_p50']:.1f} ms, p99 {offers['latency_ms_p99']:.1f} "
                 f"ms, errors {offers['errors']})")
            show(f"{name}:   CPU s in {seconds:.0f} s", ", ".join(
                f"{k} {v:.1f}" for k, v in cpu.items()))
            show(f"{name}:   server CPU per round trip",
                 f"{offers['server_cpu_ms_per_round_trip']:.2f} ms (instances + Redis)")
            results[name]["offers"] = offers

    if "memory" in parts:
        for name in ("memory", "redis-1"):
            mem = await with_setup(name, log_dir, lambda s: measure_memory(s, memory_devices))
            show(f"{name}: RSS with {memory_devices} devices",
                 f"{mem['rss_after_mb']:.0f} MB (idle {mem['rss_before_mb']:.0f} MB, "
                 f"{mem['per_device_kb']:.1f} KB/device, peak {mem['rss_peak_mb']:.0f} MB)")
            if "redis_per_device_bytes" in mem:
                show(f"{name}: Redis memory per device",
                     f"{mem['redis_per_device_bytes']:.0f} B")
            results[name]["memory"] = mem
        rss = results["memory"]["memory"]["rss_after_mb"]
        show(f"memory: RSS with {memory_devices} devices vs {RSS_TARGET_MB:.0f} MB target",
             "met" if rss < RSS_TARGET_MB else "MISSED")

    if "offers" in parts:
        share = (results["redis-1"]["offers"]["round_trips_per_s"]
                 / results["memory"]["offers"]["round_trips_per_s"])
        results["redis_share_of_memory_offer_rate"] = share
        show("redis-1 offer rate / memory offer rate",
             f"{share:.0%} (target >= {REDIS_SHARE_TARGET:.0%})")
    path = out_dir / f"signal-{stamp}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path.relative_to(ROOT)}; logs: {log_dir.relative_to(ROOT)}/")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (< 1 min)")
    parser.add_argument("--viewers", type=int, default=64, help="concurrent viewers (64)")
    parser.add_argument("--part", action="append",
                        choices=["registrations", "offers", "memory"],
                        help="measure only this (repeatable; default: all)")
    parser.add_argument("--instance", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instance:
        run_instance(json.loads(args.instance))
        return 0
    import uvloop

    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
