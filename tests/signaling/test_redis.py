"""Several signaling instances sharing one real redis-server: presence, routing, takeover,
restarts, key-based registration and rate limits.

Redis and the instances are real processes on loopback ports, started here and ended by
PID; devices and viewers are real SignalingClients (or bare WebSockets where the test looks
at the wire). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from peerproxyd.errors import SignalingError
from peerproxyd.signaling.client import SignalingClient
from peerproxyd.signaling.messages import Message
from peerproxyd.signaling.metrics import SignalMetrics
from peerproxyd.signaling.redis import RedisCluster, RedisOptions, redact
from peerproxyd.signaling.server import Registry
from peerproxyd.trust.identity import Identity
from tests.support.procs import Proc, daemon_config, free_port, new_device, python, share_link

WAIT = 5.0
TTL = 5.0
"""Presence TTL of the instances; short enough for the tests, long enough for a busy machine."""
SHORT_TTL = 2.0
CAMERA, OTHER, RACE, THIEF = (Identity.generate() for _ in range(4))
CAM = CAMERA.device_id
INSTANCE = """
import asyncio, json, logging, sys
from peerproxyd.signaling.redis import RedisOptions
from peerproxyd.signaling.server import run_signaling
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
kw = json.loads(sys.argv[1])
options = RedisOptions(**kw.pop("options"))
asyncio.run(run_signaling("127.0.0.1", kw.pop("port"), redis_options=options, **kw))
"""


class RedisServer:
    """redis-server on a free loopback port, without persistence."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (Debian package redis-server; make test "
                        "installs it)")
        self.proc = Proc("redis", [binary, "--bind", "127.0.0.1", "--port", str(self.port),
                                   "--save", "", "--appendonly", "no"], self.log_dir)
        self.proc.wait_for_log("Ready to accept connections", timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


class Instance:
    """One `run_signaling(redis_url=...)` process."""

    def __init__(self, name: str, redis: RedisServer, prefix: str, log_dir: Path,
                 **kwargs: Any) -> None:
        self.name = name
        self.port = free_port()
        options = {"prefix": prefix, "presence_ttl": TTL, **kwargs.pop("options", {})}
        spec = {"port": self.port, "redis_url": redis.url, "options": options, **kwargs}
        self.proc = Proc(name, python("-c", INSTANCE, json.dumps(spec)), log_dir)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def wait_up(self) -> None:
        await wait_for(lambda: self.get("/healthz"), what=f"{self.name} up", timeout=15)

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.port}{path}",
                                timeout=aiohttp.ClientTimeout(total=2)) as r:
                assert r.status == 200
                return await r.json() if r.content_type == "application/json" else await r.text()

    async def metrics(self) -> dict[str, Any]:
        data: dict[str, Any] = await self.get("/metrics?format=json")
        return data

    def alive(self) -> bool:
        return self.proc.popen.poll() is None


async def wait_for(check: Any, *, what: str, timeout: float = WAIT, every: float = 0.05) -> Any:
    """Call `check()` (async) until it returns something truthy without raising."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    for _ in range(int(timeout / every) + 1):
        try:
            result = await check()
            if result:
                return result
        except (OSError, aiohttp.ClientError, AssertionError, TimeoutError) as exc:
            last = exc
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(every)
    raise AssertionError(f"no {what} within {timeout} s (last error: {last!r})")


class Peer:
    """A running SignalingClient; a device answers every offer itself."""

    def __init__(self, url: str, identity: Identity | None = None) -> None:
        self.client = SignalingClient(url, identity=identity, backoff_min=0.05, backoff_max=0.2)
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def on_message(self, msg: Message) -> None:
        if msg.type == "offer" and self.client.device_id and msg.from_ and msg.payload:
            await self.client.send("answer", msg.from_, {"sdp": "answer to " + msg.payload["sdp"]})
        await self.inbox.put(msg)

    async def start(self) -> Peer:
        self.task = asyncio.create_task(self.client.run(self.on_message))
        await self.client.wait_connected(WAIT)
        return self

    async def next(self, timeout: float = WAIT) -> Message:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()

    async def offer(self, device: str, sdp: str, timeout: float = WAIT) -> Message:
        """Send an offer; the answer, or the error that came instead."""
        await self.client.send("offer", device, {"sdp": sdp})
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.inbox.get()
                if msg.type in ("answer", "error"):
                    return msg

    async def stop(self) -> None:
        await self.client.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class Cluster:
    def __init__(self, redis: RedisServer, prefix: str, log_dir: Path) -> None:
        self.redis = redis
        self.prefix = prefix
        self.log_dir = log_dir
        self.instances: list[Instance] = []
        self.peers: list[Peer] = []

    async def start(self, *names: str, **kwargs: Any) -> list[Instance]:
        started = [Instance(n, self.redis, self.prefix, self.log_dir, **kwargs) for n in names]
        self.instances += started
        await asyncio.gather(*(i.wait_up() for i in started))
        return started

    async def peer(self, instance: Instance, identity: Identity | None = None) -> Peer:
        peer = Peer(instance.url, identity)
        self.peers.append(peer)
        return await peer.start()

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.peers))
        for instance in self.instances:
            instance.proc.stop()


@pytest.fixture
async def cluster(redis_server: RedisServer, request: pytest.FixtureRequest,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    if redis_server.proc is None:  # a test restarted it and failed half way
        redis_server.start()
    c = Cluster(redis_server, f"t-{request.node.name[:40]}:", tmp_path)
    yield c
    await c.stop()
    if redis_server.proc is None:
        redis_server.start()


async def ws_connect(http: aiohttp.ClientSession, instance: Instance
                     ) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    ws, hello = await ws_hello(http, instance)
    return ws, hello["id"]


async def ws_hello(http: aiohttp.ClientSession, instance: Instance
                   ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await http.ws_connect(instance.url)
    return ws, await recv(ws)


async def ws_register(http: aiohttp.ClientSession, instance: Instance, identity: Identity
                      ) -> aiohttp.ClientWebSocketResponse:
    """A bare WebSocket that has sent a valid register message (the reply is not read)."""
    ws, hello = await ws_hello(http, instance)
    await ws.send_json({"type": "register", **identity.register_fields(hello["challenge"])})
    return ws


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        frame = await ws.receive()
    assert frame.type is aiohttp.WSMsgType.TEXT, frame
    data: dict[str, Any] = json.loads(frame.data)
    return data


# --- one Redis, several instances


async def test_offer_and_answer_across_instances(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    device = await cluster.peer(a, CAMERA)
    viewer = await cluster.peer(b)
    assert viewer.client.id is not None
    answer = await viewer.offer(CAM, "v=0 offer")
    assert (answer.type, answer.from_, answer.to) == ("answer", CAM, viewer.client.id)
    assert answer.payload == {"sdp": "answer to v=0 offer"}
    offer = await device.next()
    assert (offer.type, offer.from_) == ("offer", viewer.client.id)

    await viewer.client.send("candidate", CAM, {"candidate": None})
    assert (await device.next()).payload == {"candidate": None}
    unknown = await viewer.offer("nobody", "x")
    assert (unknown.get("code"), unknown.get("message")) == (
        "device-offline", "device nobody is not online")

    health_a, metrics_a, metrics_b = await asyncio.gather(
        a.get("/healthz"), a.metrics(), b.metrics())
    assert health_a == {"status": "ok", "devices": 1, "peers": 0,
                        "instance": metrics_a["instance"], "redis": "up"}
    assert metrics_a["devices"] == 1 and metrics_a["sessions"] == 1
    assert metrics_a["messages_routed_in"] == 2 and metrics_a["messages_routed_out"] == 1
    assert metrics_b["messages_routed_out"] == 2 and metrics_b["messages_routed_in"] == 1
    assert metrics_b["redis_up"] == 1 and metrics_b["peers"] == 1
    samples = {(s.name, s.labels["instance"]): s.value
               for f in text_string_to_metric_families(await b.get("/metrics"))
               for s in f.samples}
    assert samples[("peerproxyd_signal_messages_routed_out_total", metrics_b["instance"])] == 2
    assert samples[("peerproxyd_signal_redis_up", metrics_b["instance"])] == 1

    # The viewer leaves: the device, on the other instance, hears "bye".
    viewer_id = viewer.client.id
    await viewer.stop()
    bye = await device.next()
    assert (bye.type, bye.from_) == ("bye", viewer_id)


async def test_killed_instance_expires_and_the_device_moves(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c", options={"presence_ttl": SHORT_TTL})
    device = await cluster.peer(a, CAMERA)
    viewer = await cluster.peer(b)
    assert (await viewer.offer(CAM, "1")).type == "answer"

    # A hangs (SIGSTOP): nothing refreshes its devices, so they expire within the TTL.
    a.proc.popen.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        async def offline() -> bool:
            try:
                reply = await viewer.offer(CAM, "2", timeout=0.3)
            except TimeoutError:
                return False  # published to the hung instance: lost
            return reply.get("code") == "device-offline"

        await wait_for(offline, what="device-offline on B", timeout=SHORT_TTL + 4)
        # Expired by Redis at most SHORT_TTL after A's last refresh; then one poll.
        assert time.monotonic() - stopped < SHORT_TTL + 1.5
    finally:
        device.client.url = c.url  # the load balancer sends its reconnect elsewhere
        a.proc.popen.kill()
        a.proc.popen.wait(5)

    # The device notices the dead socket, registers on C; B routes to C now.
    await wait_for(lambda: c.metrics(), what="registration on C", timeout=10)
    await wait_for(_devices_on(c, 1), what="the device on C", timeout=10)
    answer = await viewer.offer(CAM, "3")
    assert (answer.type, answer.payload) == ("answer", {"sdp": "answer to 3"})
    assert b.alive() and c.alive()


def _devices_on(instance: Instance, count: int) -> Any:
    async def check() -> bool:
        return bool((await instance.metrics())["devices"] == count)
    return check


async def test_redis_restart(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    await cluster.peer(a, CAMERA)
    viewer = await cluster.peer(b)
    assert (await viewer.offer(CAM, "before")).type == "answer"

    cluster.redis.stop()
    # Down: what needs Redis fails cleanly, nobody crashes, the local sockets stay.
    down = await viewer.offer(CAM, "during")
    assert down.get("code") == "device-offline"
    async with aiohttp.ClientSession() as http:
        late = await ws_register(http, b, OTHER)
        assert await recv(late) == {
            "type": "error", "code": "unavailable", "ref": "register",
            "message": "the signaling service cannot register devices right now; "
                       "try again shortly"}
    assert (await b.get("/healthz"))["redis"] == "down"

    cluster.redis.start()  # same port, empty

    async def reachable() -> bool:
        try:
            return (await viewer.offer(CAM, "after", timeout=0.5)).type == "answer"
        except TimeoutError:
            return False

    await wait_for(reachable, what="device on A reachable via B after the restart",
                   timeout=10, every=0.2)
    metrics_a = await a.metrics()
    assert metrics_a["reannounced"] == 1 and metrics_a["redis_reconnects"] >= 1
    assert metrics_a["redis_errors"] >= 1
    assert (await a.get("/healthz"))["redis"] == "up"
    # Nothing about the device had to come back: a thief is still refused, by any instance.
    async with aiohttp.ClientSession() as http:
        thief, hello = await ws_hello(http, b)
        fields = THIEF.register_fields(hello["challenge"])
        await thief.send_json({"type": "register", **fields, "device": CAM})
        assert (await recv(thief))["code"] == "unauthorized"
    assert a.alive() and b.alive()


async def test_duplicate_registration_on_two_instances(cluster: Cluster) -> None:
    a, b, c = await cluster.start("a", "b", "c")
    async with aiohttp.ClientSession() as http:
        first = await ws_register(http, a, CAMERA)
        assert await recv(first) == {"type": "registered", "device": CAM}
        viewer, viewer_id = await ws_connect(http, c)
        await viewer.send_json({"type": "offer", "to": CAM, "payload": {"n": 1}})
        assert (await recv(first))["from"] == viewer_id

        second = await ws_register(http, b, CAMERA)
        assert await recv(second) == {"type": "registered", "device": CAM}
        replaced = await recv(first)
        assert (replaced["type"], replaced["code"]) == ("error", "replaced")
        assert replaced["message"] == f"device {CAM} registered again from another connection"
        async with asyncio.timeout(WAIT):
            closing = await first.receive()
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.OK)
        # The viewer's session with the old connection is over, and it hears so.
        assert await recv(viewer) == {"type": "bye", "from": CAM}
        await viewer.send_json({"type": "offer", "to": CAM, "payload": {"n": 2}})
        assert await recv(second) == {
            "type": "offer", "to": CAM, "from": viewer_id, "payload": {"n": 2}}

        # Both at once: exactly one wins, the other is told.
        hellos = [await ws_hello(http, i) for i in (a, c)]
        racers = [ws for ws, _ in hellos]
        await asyncio.gather(*(ws.send_json({
            "type": "register", **RACE.register_fields(hello["challenge"])})
            for ws, hello in hellos))
        assert [await recv(ws) for ws in racers] == [
            {"type": "registered", "device": RACE.device_id}] * 2
        words = [asyncio.create_task(recv(ws)) for ws in racers]
        done, pending = await asyncio.wait(words, timeout=WAIT,
                                           return_when=asyncio.FIRST_COMPLETED)
        await asyncio.wait(pending, timeout=0.3)  # the winner hears nothing more
        assert len(done) == 1 and all(not t.done() for t in pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        loser = words.index(done.pop())
        assert (await words[loser])["code"] == "replaced"
        winner = racers[1 - loser]
        await viewer.send_json({"type": "offer", "to": RACE.device_id, "payload": {}})
        assert (await recv(winner))["from"] == viewer_id


async def test_hijack_via_another_instance_is_refused(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    device = await cluster.peer(a, CAMERA)
    forged = Identity(THIEF.private_key, THIEF.certificate)
    object.__setattr__(forged, "device_id", CAM)  # claims the id, signs with its own key
    thief = Peer(b.url, forged)
    with pytest.raises(SignalingError) as info:
        async with asyncio.timeout(WAIT):
            await thief.client.run(thief.on_message)
    assert info.value.code == "unauthorized"
    assert info.value.message == f"device id {CAM} is not derived from this key"
    viewer = await cluster.peer(b)
    assert (await viewer.offer(CAM, "still mine")).type == "answer"
    assert device.client.connected


async def test_rate_limit_holds_across_instances(cluster: Cluster) -> None:
    # Each connection alone may send 100 at once; the address, through any instance, 6.
    instances = await cluster.start("a", "b", "c", rate=50.0, burst=100,
                                    options={"client_rate": 0.2, "client_burst": 6})
    async with aiohttp.ClientSession() as http:
        sockets = [(await ws_connect(http, i))[0] for i in instances]
        for ws in sockets:
            for _ in range(4):
                await ws.send_json({"type": "bye", "to": "nobody"})
        codes = [(await recv(ws))["code"] for ws in sockets for _ in range(4)]
    accepted = codes.count("device-offline")
    assert codes.count("rate-limited") + accepted == 12
    assert 6 <= accepted <= 7, codes  # 6 at once, perhaps one more refilled meanwhile
    limited = sum([(await i.metrics())["rate_limited"] for i in instances])
    assert limited == 12 - accepted


async def test_native_client_through_another_instance(cluster: Cluster, tmp_path: Path) -> None:
    """The whole path (WebRTC too): daemon registered on A, `peerproxyd connect` via B."""
    a, b = await cluster.start("a", "b")
    upstream_port = free_port()
    procs = [Proc("upstream", python("-m", "tests.support.upstream_app", "--port",
                                     str(upstream_port), "--name", "camera"), tmp_path)]
    try:
        new_device(tmp_path / "state")
        config = daemon_config(tmp_path / "daemon.toml", state_dir=tmp_path / "state",
                               signal_port=a.port, services={"camera": upstream_port})
        procs.append(Proc("daemon", python("-m", "peerproxyd", "serve", "--config",
                                           str(config)), tmp_path))
        procs[-1].wait_for_log("registered as")
        listen = free_port()
        procs.append(Proc("client", python(
            "-m", "peerproxyd", "connect", share_link(tmp_path / "state", "camera", "alice"),
            "--signal", b.url, "--listen", f"127.0.0.1:{listen}",
            "--host-address", "127.0.0.1"), tmp_path))
        procs[-1].wait_for_log("is at http", timeout=30)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{listen}/",
                                timeout=aiohttp.ClientTimeout(total=30)) as r:
                assert (r.status, await r.text()) == (200, "hello from camera\n")
    finally:
        for proc in reversed(procs):
            proc.stop()


# --- the engine in this process


@pytest.fixture
async def engine(redis_server: RedisServer, request: pytest.FixtureRequest
                 ) -> AsyncIterator[RedisCluster]:
    if redis_server.proc is None:
        redis_server.start()
    cluster = RedisCluster(redis_server.url, RedisOptions(prefix=f"u-{request.node.name}:"),
                           rate=20.0, burst=100, metrics=SignalMetrics())
    await cluster.start(Registry(cluster, cluster.metrics))
    yield cluster
    await cluster.stop()


async def test_unreachable_redis_is_a_connection_error() -> None:
    port = free_port()
    engine = RedisCluster(f"redis://:pw@127.0.0.1:{port}/0", RedisOptions(), rate=1.0,
                          burst=1, metrics=SignalMetrics())
    assert engine.url == f"redis://***@127.0.0.1:{port}/0"
    with pytest.raises(SignalingError) as info:
        await engine.start(None)  # type: ignore[arg-type]
    assert info.value.code == "redis-unavailable"
    assert info.value.message.startswith(f"cannot reach Redis at redis://***@127.0.0.1:{port}/0")
    with pytest.raises(ConnectionError):
        await engine.claim(CAM, "c-0123456789abcdef")
    assert await engine.allow("127.0.0.1")  # fails open
    assert not await engine.route("c-0123456789abcdef", CAM, "offer", "{}")
    assert not engine.up


def test_options_and_helpers() -> None:
    assert redact("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
    with pytest.raises(ValueError):
        RedisOptions(presence_ttl=0.1)
    with pytest.raises(ValueError):
        RedisOptions(client_rate=0)


async def test_client_key_behind_trusted_proxies() -> None:
    from aiohttp.test_utils import make_mocked_request

    engine = RedisCluster("redis://127.0.0.1:1/0",
                          RedisOptions(trusted_proxies=("10.0.0.0/8",)),
                          rate=1.0, burst=1, metrics=SignalMetrics())

    def key(remote: str, forwarded: str | None) -> str:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        request = make_mocked_request("GET", "/ws", headers=headers)
        return engine.client_key(request.clone(remote=remote))

    assert key("192.0.2.1", "198.51.100.7") == "192.0.2.1"  # not a trusted proxy
    assert key("10.1.1.1", "198.51.100.7, 10.2.2.2") == "198.51.100.7"
    assert key("10.1.1.1", None) == "10.1.1.1"
    await engine.redis.aclose()


async def test_subscription_comes_back_after_redis_drops_it(engine: RedisCluster) -> None:
    channel = f"{engine.options.prefix}to:{engine.tag}"
    assert await engine.redis.pubsub_numsub(channel) == [(channel, 1)]
    await engine.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

    async def subscribed() -> bool:
        await engine.refresh()  # the heartbeat; it also pings the subscription
        return bool(await engine.redis.pubsub_numsub(channel) == [(channel, 1)])

    await wait_for(subscribed, what="the subscription back", timeout=10, every=0.2)
    assert engine.up
