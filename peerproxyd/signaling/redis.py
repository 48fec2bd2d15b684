"""Several signaling instances, one Redis: presence, routing, takeover, limits.

Keys, all under `RedisOptions.prefix` ("peerproxyd:"):

    dev:<device id>   hello id of the connection holding the device (its first 6 characters
                      "c-" + tag name the instance), PX presence_ttl; the instance refreshes
                      it every presence_ttl/3, so a crashed instance's devices expire, and
                      writes it again when Redis has lost it (a restart)
    tag:<tag>         the instance owning a 4-hex-digit tag, PX presence_ttl
    rl:<client>       token bucket of one client address, shared by every instance

Every instance subscribes to `to:<tag>`. Its viewers' hello ids carry the tag
("c-" + tag + 12 random hex digits), so a message for a viewer is published straight to
its instance; one for a device looks `dev:<id>` up and publishes to the holder's tag in
the same script. Envelopes are lines (JSON text never holds a raw newline):

    m <src tag> <sender> <to> <type> <message text>   deliver; "u" back if `to` is gone
    u <sender> <to> <type>                             undeliverable: sender gets *-offline
    k <device id> <hello id>                           that connection lost the device

Who may register a device id needs no shared state: the device proves it holds the key the
id is derived from (identity.py), checked by whichever instance it connects to.
A registration is one script: SET the device key, and if another instance held it,
PUBLISH "k" there; Redis runs scripts one at a time, so the last registration wins and
every earlier holder hears so. Redis calls that fail raise ClusterUnavailable (a
ConnectionError); the instance keeps serving what it can locally and retries.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import re
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from peerproxyd.errors import SignalingError
from peerproxyd.signaling.messages import PEER_ID, valid_device_id
from peerproxyd.signaling.metrics import SignalMetrics

if TYPE_CHECKING:
    from aiohttp import web

    from peerproxyd.signaling.cluster import LocalRegistry

logger = logging.getLogger(__name__)

T = TypeVar("T")
LEASE_TIME = 0.5
"""Rate-limit tokens an instance took from Redis expire unused after this many seconds."""
REFRESH_BATCH = 500
RETRY_MIN, RETRY_MAX = 0.1, 2.0
START_TIMEOUT = 10.0
TAG = re.compile(r"[0-9a-f]{4}")

# KEYS[1] device key. ARGV: hello id, ttl ms, channel prefix, device id, own tag.
_CLAIM = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if old and old ~= ARGV[1] and string.sub(old, 3, 6) ~= ARGV[5] then
  redis.call('PUBLISH', ARGV[3] .. string.sub(old, 3, 6), 'k\\n' .. ARGV[4] .. '\\n' .. old)
end
return old
"""
# KEYS[1] device key. ARGV: hello id.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] device key. ARGV: channel prefix, envelope. A holder nobody listens for is dead.
_ROUTE = """
local owner = redis.call('GET', KEYS[1])
if not owner then return 0 end
local n = redis.call('PUBLISH', ARGV[1] .. string.sub(owner, 3, 6), ARGV[2])
if n == 0 then redis.call('DEL', KEYS[1]) end
return n
"""
# KEYS: device keys. ARGV[1] ttl ms, then one hello id per key. Returns {lost, written}.
_REFRESH = """
local lost, written = {}, {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v == ARGV[i + 1] then redis.call('PEXPIRE', key, ARGV[1])
  elseif not v then
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
    table.insert(written, i)
  else table.insert(lost, i) end
end
return {lost, written}
"""
# KEYS[1] tag key. ARGV: instance uuid, ttl ms. 1 if ours (now or again), 0 if taken.
_TAG = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
# KEYS[1] bucket. ARGV: rate/s, burst, tokens wanted. Returns tokens granted (0..wanted).
# Time in microseconds (integers below 2^53 are exact in Lua's doubles).
_TAKE = """
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if not tokens or not ts then tokens, ts = burst, now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000000) end
local got = math.min(want, math.floor(tokens))
redis.call('HSET', KEYS[1], 't', string.format('%.6f', tokens - got),
           'ts', string.format('%.0f', math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return got
"""
class ClusterUnavailable(ConnectionError):
    """Redis could not be reached (or answered with an error); try again later."""


@dataclass(frozen=True, kw_only=True)
class RedisOptions:
    """Tuning of the Redis engine; the defaults suit a production service."""

    prefix: str = "peerproxyd:"
    presence_ttl: float = 15.0
    """Seconds a crashed instance's devices stay visible; refreshed every third of it."""
    client_rate: float | None = None
    """Messages/s one client address may send through all instances (None: `rate`)."""
    client_burst: int | None = None
    """Messages one client address may send at once through all instances (None: `burst`)."""
    trusted_proxies: tuple[str, ...] = ()
    """Load balancers (addresses or networks) whose X-Forwarded-For names the client."""
    max_connections: int = 64
    """Redis connections per instance (one is the subscription)."""

    def __post_init__(self) -> None:
        if self.presence_ttl < 0.3:
            raise ValueError("presence_ttl must be at least 0.3 s")
        if (self.client_rate is not None and self.client_rate <= 0) or (
            self.client_burst is not None and self.client_burst < 1
        ):
            raise ValueError("client_rate must be > 0 and client_burst >= 1")
        if self.max_connections < 2:
            raise ValueError("max_connections must be at least 2")


def redact(url: str) -> str:
    """`url` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return parts._replace(netloc=user + netloc).geturl()


class _Lease:
    """Tokens of one client's shared bucket this instance took from Redis, until `until`.

    `tokens` 0 from the start means Redis refused: the client stays refused here until
    the bucket can have refilled one token.
    """

    __slots__ = ("tokens", "until", "refused")

    def __init__(self, tokens: int, until: float) -> None:
        self.tokens = tokens
        self.until = until
        self.refused = tokens == 0


class RedisCluster:
    """This instance's side of the shared engine (a `cluster.Cluster`)."""

    def __init__(
        self, url: str, options: RedisOptions, *, rate: float, burst: int, metrics: SignalMetrics
    ) -> None:
        self.url = redact(url)
        self.options = options
        self.metrics = metrics
        self.up = False
        self.tag = ""
        self.instance = ""
        self._uuid = secrets.token_hex(16)
        self._prefix = options.prefix
        self._ttl_ms = max(1, round(options.presence_ttl * 1000))
        self._rate = options.client_rate if options.client_rate is not None else rate
        self._burst = options.client_burst if options.client_burst is not None else burst
        self._lease_size = max(1, min(self._burst // 10, int(self._rate * LEASE_TIME)))
        self._leases: dict[str, _Lease] = {}
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, list[asyncio.Future[bool]]] = {}
        self._batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in options.trusted_proxies]
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=options.max_connections,
            timeout=5.0,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        )
        self.redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._route = self.redis.register_script(_ROUTE)
        self._refresh_devices = self.redis.register_script(_REFRESH)
        self._hold_tag = self.redis.register_script(_TAG)
        self._take = self.redis.register_script(_TAKE)
        self._registry: LocalRegistry | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._wake = asyncio.Event()
        self._pings_sent = self._pings_seen = 0
        self._stopping = False

    # --- keys and calls

    def key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def _channel(self, tag: str) -> str:
        return f"{self._prefix}to:{tag}"

    async def call(self, aw: Awaitable[T], *, probe: bool = False) -> T:
        """Await one Redis call; count and log failures, raise ClusterUnavailable.

        While Redis is known to be down, only probes (heartbeat, subscription) try it;
        other calls fail at once instead of each waiting for a connection attempt.
        """
        if not self.up and not probe:
            if inspect.iscoroutine(aw):
                aw.close()
            raise ClusterUnavailable(f"Redis at {self.url} is unreachable")
        try:
            result = await aw
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._down(exc)
            raise ClusterUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc
        except RedisError as exc:
            self.metrics.redis_errors += 1
            logger.error("Redis call failed: %s", exc)
            raise ClusterUnavailable(f"Redis call failed: {exc}") from exc
        if not self.up:
            self._back()
        return result

    def _down(self, exc: BaseException) -> None:
        self.metrics.redis_errors += 1
        if self.up:
            logger.warning("Redis at %s lost: %s; serving local connections meanwhile",
                           self.url, exc or type(exc).__name__)
        self.up = False

    def _back(self) -> None:
        self.up = True
        self.metrics.redis_reconnects += 1
        logger.warning("Redis at %s is back; re-announcing devices", self.url)
        self._wake.set()

    # --- lifecycle

    async def start(self, registry: LocalRegistry) -> None:
        """Connect, take a tag, subscribe; SignalingError if Redis cannot be reached."""
        self._registry = registry
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await self.redis.ping()
                for _ in range(64):
                    tag = secrets.token_hex(2)
                    if await self._hold_tag(keys=[self.key("tag", tag)],
                                            args=[self._uuid, self._ttl_ms]):
                        break
                else:
                    raise SignalingError("redis-unavailable", "no free instance tag in Redis")
        except (RedisError, OSError, TimeoutError) as exc:
            await self.redis.aclose()
            raise SignalingError(
                "redis-unavailable", f"cannot reach Redis at {self.url}: {exc or 'timeout'}"
            ) from exc
        self.tag = self.instance = tag
        self.up = True
        self._resubscribe()
        self._heartbeat_task = asyncio.create_task(self._heartbeat())
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await self._subscribed.wait()
        except TimeoutError:
            await self.stop()
            raise SignalingError("redis-unavailable",
                                 f"cannot subscribe at Redis {self.url}") from None
        logger.info("signaling instance %s sharing state through Redis at %s (presence %.1f s)",
                    self.tag, self.url, self.options.presence_ttl)

    async def stop(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._listener, self._heartbeat_task, self._flusher,
                             *self._fetches.values()) if t is not None]
        self._listener = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            async with asyncio.timeout(2.0):
                await self._release(keys=[self.key("tag", self.tag)], args=[self._uuid])
        except (RedisError, OSError, TimeoutError):
            pass
        await self.redis.aclose()

    # --- what server.py calls

    def new_peer_id(self) -> str:
        return f"c-{self.tag}{secrets.token_hex(6)}"

    def client_key(self, request: web.Request) -> str:
        """The address whose rate limit a connection spends (X-Forwarded-For if trusted)."""
        remote = request.remote or "unknown"
        if not self._trusted or not self._is_trusted(remote):
            return remote
        hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", ())
                for h in v.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else remote

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    async def allow(self, client: str) -> bool:
        """Spend one token of `client`'s shared bucket; True while Redis is unreachable.

        Tokens come from Redis a lease at a time. Connections of one client that run out
        together queue for one fetch, sized for all of them, and share what it brings in
        arrival order (instead of each draining the bucket with a fetch of its own).
        """
        if not self.up:
            return True  # fail open: the per-connection bucket still holds
        lease = self._leases.get(client)
        loop = asyncio.get_running_loop()
        if lease is not None and lease.until > loop.time():
            if lease.tokens > 0:
                lease.tokens -= 1
                return True
            if lease.refused:
                return False
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.setdefault(client, []).append(waiter)
        if client not in self._fetches:
            self._fetches[client] = loop.create_task(self._fetch(client))
        return await waiter

    async def _fetch(self, client: str) -> None:
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[bool]] = []
        try:
            await asyncio.sleep(0)  # let the connections that ran out with this one queue up
            waiters = self._waiters.pop(client, [])
            want = min(self._burst, max(self._lease_size, len(waiters)))
            try:
                got = int(await self.call(self._take(
                    keys=[self.key("rl", client)], args=[self._rate, self._burst, want])))
            except ClusterUnavailable:
                self._leases.pop(client, None)
                return  # fail open (finally): the per-connection bucket still holds
            hold = LEASE_TIME if got else min(LEASE_TIME, 1.0 / self._rate)
            lease = self._leases[client] = _Lease(got, loop.time() + hold)
            for waiter in waiters:
                if waiter.done():
                    continue
                if lease.tokens > 0:
                    lease.tokens -= 1
                    waiter.set_result(True)
                else:
                    waiter.set_result(False)
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)
            del self._fetches[client]
            if self._waiters.get(client) and not self._stopping:  # queued meanwhile
                self._fetches[client] = loop.create_task(self._fetch(client))

    async def claim(self, device_id: str, hello_id: str) -> None:
        """Make `hello_id` (a connection here) the holder of `device_id` everywhere."""
        old = await self.call(self._claim(
            keys=[self.key("dev", device_id)],
            args=[hello_id, self._ttl_ms, self._channel(""), device_id, self.tag]))
        if old and old[2:6] != self.tag:
            logger.info("device %s taken over from instance %s", device_id, old[2:6])

    async def release(self, device_id: str, hello_id: str) -> None:
        """Forget the presence, if `hello_id` still holds it; never raises."""
        try:
            await self.call(self._release(keys=[self.key("dev", device_id)], args=[hello_id]))
        except ClusterUnavailable:
            pass  # it expires by itself

    async def route(self, sender: str, to: str, kind: str, text: str) -> bool:
        """Publish a relay message to the instance holding `to`; False if none does."""
        if not (PEER_ID.fullmatch(to) or valid_device_id(to)):
            return False  # also keeps newlines out of the envelope
        envelope = f"m\n{self.tag}\n{sender}\n{to}\n{kind}\n{text}"
        if PEER_ID.fullmatch(to):
            if to[2:6] == self.tag:
                return False
            command: tuple[Any, ...] = ("PUBLISH", self._channel(to[2:6]), envelope)
        else:
            command = ("EVALSHA", self._route.sha, 1, self.key("dev", to), self._channel(""),
                       envelope)
        try:
            sent = await self._batched(command)
        except ClusterUnavailable:
            return False
        if sent:
            self.metrics.messages_routed_out += 1
        return bool(sent)

    async def _batched(self, command: tuple[Any, ...]) -> Any:
        """Run `command` in the next pipeline: the route calls made while one pipeline is
        on its way go together in the next (one write and one round trip for all)."""
        if not self.up:
            raise ClusterUnavailable(f"Redis at {self.url} is unreachable")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._batch.append((command, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        retried = False
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                pipe = self.redis.pipeline(transaction=False)
                for command, _ in batch:
                    pipe.execute_command(*command)
                try:
                    results = await self.call(pipe.execute(raise_on_error=False))
                except ClusterUnavailable as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (command, future), result in zip(batch, results):
                    if isinstance(result, NoScriptError) and not retried:
                        self._batch.append((command, future))  # Redis restarted: load, retry
                    elif future.done():
                        pass
                    elif isinstance(result, Exception):
                        future.set_exception(ClusterUnavailable(f"Redis call failed: {result}"))
                    else:
                        future.set_result(result)
                if not any(isinstance(r, NoScriptError) for r in results):
                    retried = False
                elif not retried:
                    retried = True
                    try:
                        await self.call(self.redis.script_load(_ROUTE))
                    except ClusterUnavailable:
                        pass  # the retry fails and reports it
        finally:
            self._flusher = None
            leftover, self._batch = self._batch, []
            for _, future in leftover:
                if not future.done():
                    future.set_exception(ClusterUnavailable("Redis routing stopped"))

    # --- the subscription and the heartbeat

    def _resubscribe(self) -> None:
        """(Re)start the subscription task, e.g. when it is stuck on a dead socket."""
        if self._listener is not None:
            self._listener.cancel()
        self._pings_seen = self._pings_sent
        self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        # A replaced listener must stop even when its cancel is lost: redis-py 8.1 can
        # swallow a CancelledError while its pubsub reconnects by itself, and the stale
        # listener then handled every envelope a second time (pings counted twice,
        # routed messages delivered twice).
        me = asyncio.current_task()
        delay = RETRY_MIN
        while self._listener is me:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await self.call(pubsub.subscribe(self._channel(self.tag)), probe=True)
                self._subscribed.set()
                delay = RETRY_MIN
                async for item in pubsub.listen():
                    if self._listener is not me:
                        break
                    if item.get("type") == "message":
                        try:
                            self._on_envelope(item["data"])
                        except Exception:  # a bug must not end the subscription
                            logger.exception("failed to handle a routed message")
            except (ClusterUnavailable, RedisError, OSError) as exc:
                if not isinstance(exc, ClusterUnavailable):
                    self._down(exc)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _on_envelope(self, data: str) -> None:
        registry = self._registry
        assert registry is not None
        kind, _, rest = data.partition("\n")
        try:
            if kind == "p":
                self._pings_seen += 1
            elif kind == "m":
                src, sender, to, msg_type, text = rest.split("\n", 4)
                if not registry.deliver_routed(sender, to, msg_type, text) and msg_type != "bye":
                    registry.spawn(self._publish(src, f"u\n{sender}\n{to}\n{msg_type}"))
            elif kind == "u":
                sender, to, msg_type = rest.split("\n", 2)
                registry.undeliverable(sender, to, msg_type)
            elif kind == "k":
                device_id, hello_id = rest.split("\n", 1)
                registry.evict(device_id, hello_id, "registered again on another instance")
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except ValueError as exc:
            logger.warning("ignoring a malformed envelope (%s): %r", exc, data[:80])

    async def _publish(self, tag: str, envelope: str) -> None:
        if TAG.fullmatch(tag):
            try:
                await self.call(self.redis.publish(self._channel(tag), envelope))
            except ClusterUnavailable:
                pass

    async def _heartbeat(self) -> None:
        interval = self.options.presence_ttl / 3
        while True:
            delay = interval if self.up else min(interval, 0.5)
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.refresh()
            except ClusterUnavailable:
                continue

    async def refresh(self) -> None:
        """Keep this instance's tag and devices alive; write back what Redis lost."""
        registry = self._registry
        assert registry is not None
        # Our own ping, to see that the subscription is alive at both ends.
        listeners = await self.call(self.redis.publish(self._channel(self.tag), "p"), probe=True)
        self._pings_sent += 1
        if not listeners or self._pings_sent - self._pings_seen > 2:
            logger.warning("subscription to Redis lost (%d pings unanswered); subscribing again",
                           self._pings_sent - self._pings_seen)
            self._resubscribe()
        if not await self.call(self._hold_tag(keys=[self.key("tag", self.tag)],
                                              args=[self._uuid, self._ttl_ms]), probe=True):
            logger.error("instance tag %s is held by another instance (Redis lost it?); "
                         "viewers of both may see spurious offline errors", self.tag)
        held = registry.held_devices()
        written: list[str] = []
        for start in range(0, len(held), REFRESH_BATCH):
            batch = held[start:start + REFRESH_BATCH]
            lost, new = await self.call(self._refresh_devices(
                keys=[self.key("dev", d) for d, _ in batch],
                args=[self._ttl_ms, *(h for _, h in batch)]), probe=True)
            for i in lost:
                device_id, hello_id = batch[int(i) - 1]
                registry.evict(device_id, hello_id, "now held through another instance")
            written += [batch[int(i) - 1][0] for i in new]
        if written:
            self.metrics.reannounced += len(written)
            logger.info("re-announced %d devices to Redis", len(written))
        now = asyncio.get_running_loop().time()
        for client in [c for c, lease in self._leases.items() if lease.until <= now]:
            del self._leases[client]
