"""Call state shared by several replicas on Redis/Valkey (`--state-backend URL`).

The default keeps calls in this process's memory: server.py calls the `Correlator` directly,
with no await. `SharedState` keeps them in Redis instead and runs the same pure functions of
correlator.py (`apply`, `settle`, `drop`) on a call as stored in Redis, then writes it back
with a compare-and-set on a write token (a Lua script that knows no correlation rule): the
write succeeds only if the call is still as it was read, else the script returns the call as
it is now and the notification is applied to that, again. Facts are returned only for writes
that succeeded, so a notification or a decision is counted once, whichever replica makes it.

A write needs no read first when this replica can guess the call: absent (its first
notification), or as this replica last wrote it (a small cache); a wrong guess costs the
round trip a read would have.

A request does not wait for any of this: `submit` queues the notification and the request
is answered; one task per call applies the call's queued notifications in order, and hands
each result to `deliver` (server.py records the metrics then). The commands of all calls
share up to PIPELINES round trips in flight (`Pipeliner`), each bounded in time, so neither
the round-trip time nor a hung Redis holds a request; a Redis too slow for the traffic shows
as `behind` (MAX_QUEUED), never as a refusal.

Keys. Calls are spread over SHARDS shards by a CRC of the conf id; every key of a shard
carries the hash tag `{mtt-<shard>}`, so Redis Cluster keeps a call and its indexes in one
slot and the compare-and-set updates them atomically:
- `{mtt-N}:call:<conf id>`: hash `v` (write token), `d` (JSON of `call_to_dict`); it
  expires KEY_TTL_MARGIN after the call TTL, a safety net: a replica deletes it at the TTL;
- `{mtt-N}:due`: conf id -> when the call next needs a decision (end of a grace period, or
  its TTL); every write lowers it to the new state's time (ZADD LT), never later;
- `{mtt-N}:leased`: conf id -> end of the lease of the replica deciding it. A claim moves
  due entries here atomically, so one replica decides each; if it dies, another takes the
  entry when the lease ends. Its write of the decided call removes the entry;
- `{mtt-N}:seen`: conf id -> last receipt time: the oldest is evicted at `--max-calls`.

If Redis fails or a round trip outlasts its bound, notifications are correlated in local
memory (the `Correlator` the default uses), `up` turns false, and the ticker probes Redis
every second until it answers. A call that received a notification in local memory stays
there until it ends or expires.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from .correlator import (
    Call,
    CallEnded,
    CallStarted,
    Correlator,
    EvictionReason,
    Fact,
    MAX_NOTIFICATIONS_PER_CALL,
    apply,
    call_from_dict,
    call_to_dict,
    drop,
    settle,
)
from .model import Notification, PayloadError, Reason

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff
    from redis.exceptions import NoScriptError, RedisError, ResponseError

    BACKEND_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, asyncio.TimeoutError)
except ImportError:  # the `redis` extra is not installed
    aioredis = None  # type: ignore[assignment]

log = logging.getLogger("mtt_exporter")

#: Shards of the key space; part of the key layout, so never changed.
SHARDS = 16
#: Redis keys outlive the call TTL by this much; replicas delete them at the TTL.
KEY_TTL_MARGIN = 600.0
#: A replica that claimed a due call has this long to decide it before another may.
LEASE_SECONDS = 10.0
#: Due calls claimed per shard in one round trip, and rounds per tick at most.
CLAIM_BATCH = 64
CLAIM_ROUNDS = 8
#: Compare-and-set attempts before a notification is correlated locally instead.
ATTEMPTS = 16
#: Bound of one round trip to the backend: its usual time (a moving average) plus
#: TIMEOUT_SECONDS, at most MAX_TIMEOUT_SECONDS. Past it the notifications it carried are
#: correlated in local memory and the backend counts as down until a probe answers (every
#: second). Requests never wait for the backend (see `SharedState.submit`): this bounds how
#: long a notification stays queued when Redis hangs (plus connecting, if the connection
#: is new). The margin over the usual round trip keeps a busy host from tripping it.
TIMEOUT_SECONDS = 0.5
MAX_TIMEOUT_SECONDS = 0.9
#: Bound of connecting (a TCP handshake and up to four round trips of set-up in redis-py),
#: done at start and
#: after a failure only.
CONNECT_TIMEOUT_SECONDS = 2.0
#: Round trips in flight at once, each on its own connection (see `Pipeliner`).
PIPELINES = 4
#: Notifications answered and waiting for the backend: past MAX_QUEUED the notifications of
#: new calls are correlated locally ("behind", visible in /-/ready and the metrics) until the
#: queue is down to half; past twice that, a request waits for its notification instead.
MAX_QUEUED = 4096
#: At shutdown, notifications still queued this long are correlated locally (and saved
#: with the --state-file, if any).
FLUSH_SECONDS = 5.0
#: Due calls decided at once by the tick: each takes one or two round trips, so at a long
#: round trip this is what keeps decisions up with the calls that come in.
EXPIRE_IN_FLIGHT = 256
#: Calls whose last write by this replica is remembered, to write without reading first.
CACHED_CALLS = 10_000
#: URL schemes: a single endpoint, a Cluster (one node to start from), Sentinel.
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")

# KEYS: call, due, seen, leased, open (one shard). ARGV: expected token ("" = no call), new
# token, JSON ("" = delete), key TTL ms, conf id, due time, receipt time ("" = keep), "1" =
# release the lease, change of the calls in progress. Returns 1 when written, else the call
# as it is: {token, JSON} ({nil, nil}: none).
_CAS = """
local current = redis.call('HMGET', KEYS[1], 'v', 'd')
if (current[1] or '') ~= ARGV[1] then return current end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[5])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[2], 'LT', ARGV[6], ARGV[5])
  if ARGV[7] ~= '' then redis.call('ZADD', KEYS[3], 'GT', ARGV[7], ARGV[5]) end
end
if ARGV[8] == '1' then redis.call('ZREM', KEYS[4], ARGV[5]) end
if ARGV[9] ~= '0' and redis.call('INCRBY', KEYS[5], ARGV[9]) == 0 then redis.call('DEL', KEYS[5]) end
return 1
"""
# KEYS: due, leased (one shard); ARGV: now, lease end, most members. Expired leases first.
_CLAIM = """
local limit = tonumber(ARGV[3])
local claimed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, limit)
for _, member in ipairs(claimed) do redis.call('ZADD', KEYS[2], ARGV[2], member) end
if #claimed < limit then
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit - #claimed)) do
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZADD', KEYS[2], ARGV[2], member)
    claimed[#claimed + 1] = member
  end
end
return claimed
"""
_SCRIPTS = {"cas": _CAS, "claim": _CLAIM}


class BackendOperation(StrEnum):
    """What the exporter asked the shared backend: the `operation` label."""

    APPLY = "apply"
    EXPIRE = "expire"
    PING = "ping"


@dataclass(slots=True)
class BackendStats:
    """Plain counters of the shared backend, read by metrics.py at scrape time."""

    up: bool = False
    #: calls in the shared backend, and those in progress, as of the last tick (the same
    #: on every replica)
    calls: int = 0
    in_progress: int = 0
    fallbacks: int = 0
    retries: int = 0
    #: notifications answered and not yet applied; true while more than MAX_QUEUED were
    #: (until half drained), and the notifications correlated locally because of it
    queued: int = 0
    behind: bool = False
    overflows: int = 0
    errors: dict[BackendOperation, int] = field(default_factory=lambda: dict.fromkeys(BackendOperation, 0))


Result = tuple[bool, list[Fact]]
#: Receives (notification, the `received` given to `submit`, its result or the PayloadError
#: that refused it).
Deliver = Callable[[Notification, float, "Result | PayloadError"], None]
#: A queued notification: (it, the time to apply it at, when it was received, a future to
#: answer or None to `deliver`)
Queued = tuple[Notification, float, float, "asyncio.Future | None"]


def _ignore(n: Notification, received: float, result: Result | PayloadError) -> None:
    """The default `SharedState.deliver`: results of queued notifications are dropped."""


class Contended(Exception):
    """Other writers kept changing the call: ATTEMPTS compare-and-sets failed."""


def masked_url(url: str) -> str:
    """The URL with its password replaced, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


@dataclass(frozen=True)
class SentinelURL:
    """redis[s]+sentinel://[[user]:password@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?sentinel_password=...]"""

    hosts: list[tuple[str, int]]
    service: str
    db: int
    auth: dict[str, str]
    sentinel_password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        scheme, _, rest = url.partition("://")
        parts = urlsplit(f"redis://{rest}")
        service, _, db = parts.path.strip("/").partition("/")
        if not service or (db and not db.isdigit()):
            raise ValueError("a Sentinel URL names the service: redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB]")
        hosts = []
        for node in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = node.rpartition(":") if ":" in node.rpartition("]")[2] else (node, "", "")
            if not host or (port and not port.isdigit()):
                raise ValueError(f"a Sentinel URL lists HOST:PORT, got {node!r}")
            hosts.append((host.strip("[]"), int(port or 26379)))
        auth = {k: unquote(v) for k, v in (("username", parts.username), ("password", parts.password)) if v}
        password = parse_qs(parts.query).get("sentinel_password", [None])[0]
        return cls(hosts, service, int(db or 0), auth, password, scheme.lower().startswith("rediss"))


def check_url(url: str) -> None:
    """Raise ValueError unless `url` is a state backend URL `connect` takes."""
    scheme = url.partition("://")[0].lower()
    if scheme not in SCHEMES:
        raise ValueError(f"expected a URL of scheme {', '.join(SCHEMES)}")
    if scheme.endswith("+sentinel"):
        SentinelURL.parse(url)
        return
    parts = urlsplit(url)
    _ = parts.port  # ValueError if not a number
    if not (parts.path if scheme == "unix" else parts.hostname):
        raise ValueError("the URL names no host" if scheme != "unix" else "the URL names no socket path")


def connect(url: str) -> Any:
    """A client for `url` (see SCHEMES), failing fast: no retries, short timeouts."""
    options: dict[str, Any] = dict(
        socket_timeout=MAX_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),  # a failure means fallback at once, not a wait
        client_name="mtt-exporter",
    )
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    base = scheme.partition("+")[0]
    if scheme.endswith("+cluster"):
        # a retry or two: a MOVED answer while the Cluster reshards is followed, not fatal
        return RedisCluster.from_url(f"{base}://{rest}", **{**options, "retry": Retry(NoBackoff(), 2)})
    if scheme.endswith("+sentinel"):
        s = SentinelURL.parse(url)
        sentinel_auth = {"password": s.sentinel_password} if s.sentinel_password else {}
        sentinel = Sentinel(s.hosts, sentinel_kwargs={**options, **sentinel_auth, "ssl": s.tls}, **options)
        return sentinel.master_for(s.service, db=s.db, ssl=s.tls, **s.auth, **options)
    return aioredis.Redis.from_url(url, max_connections=PIPELINES + 8, **options)


def next_due(call: Call, ttl: float) -> float:
    """When the call next needs a decision: its grace deadline, else its TTL."""
    expiry = call.last_seen + ttl
    deadline = call.deadline
    return deadline if deadline is not None and deadline < expiry else expiry


def _packed(command: tuple[object, ...]) -> bytes:
    """`command` in RESP, as redis-py's encoder writes it (bytes as they are, str as UTF-8,
    numbers as repr), at a fifth of its cost: the hot path writes one command per notification."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            arg = arg.encode()
        elif not isinstance(arg, bytes):
            arg = repr(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class Pipeliner:
    """Commands of concurrent requests sent together. Up to `pipelines` round trips are in
    flight at once, each on a connection of its own, and each carries everything queued
    while the others were on their way: at a long round trip a replica's throughput is the
    commands per pipeline times `pipelines` per round trip, not one request per round trip.
    The commands of one `send` stay together and in order. Every round trip (connecting
    included) is bounded by `timeout`; when one fails, the commands queued behind it fail
    at once too, rather than each waiting for its own timeout."""

    def __init__(self, redis: Any, timeout: float = TIMEOUT_SECONDS, most: float = MAX_TIMEOUT_SECONDS,
                 pipelines: int = PIPELINES) -> None:
        self.redis, self.timeout, self.most, self.pipelines = redis, timeout, most, pipelines
        #: the usual round trip: a moving average of those that succeeded
        self.round_trip = 0.0
        self._queue: list[tuple[tuple[tuple[object, ...], ...], asyncio.Future]] = []
        self._running = 0
        self._tasks: set[asyncio.Task] = set()
        # a Cluster spreads a pipeline over its nodes itself; elsewhere commands go straight
        # to a connection (redis-py's Pipeline costs more Python per round trip than Redis does)
        self._direct = getattr(redis, "connection_pool", None) is not None

    async def send(self, *commands: tuple[object, ...]) -> list[Any]:
        """Results of `commands` (an exception object for one that failed); raises when
        the round trip failed or took longer than the timeout."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((commands, future))
        if self._running < self.pipelines:
            self._running += 1
            task = asyncio.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _run(self) -> None:
        connection = None
        pool = self.redis.connection_pool if self._direct else None
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                commands = [command for request, _ in batch for command in request]
                try:
                    if pool is not None and (connection is None or not connection.is_connected):
                        # connecting takes round trips of its own (TCP, CLIENT SETNAME, SETINFO)
                        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                            if connection is None:
                                connection = await pool.get_connection()
                            else:
                                await connection.connect()
                    started = loop.time()
                    async with asyncio.timeout(min(self.round_trip + self.timeout, self.most)):
                        if pool is None:
                            results = await self._pipeline(commands)
                        else:
                            results = await self._direct_round_trip(connection, commands)
                    self.round_trip += (loop.time() - started - self.round_trip) / 8
                except Exception as error:
                    if connection is not None:
                        await connection.disconnect(nowait=True)  # its replies may still come: never reuse it
                    batch += self._queue  # queued behind a failed round trip: fail now, not one timeout each
                    self._queue = []
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                start = 0
                for request, future in batch:
                    if not future.done():
                        future.set_result(results[start:start + len(request)])
                    start += len(request)
        finally:
            self._running -= 1
            if connection is not None and pool is not None:
                await pool.release(connection)

    async def _pipeline(self, commands: list[tuple[object, ...]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)

    @staticmethod
    async def _direct_round_trip(connection: Any, commands: list[tuple[object, ...]]) -> list[Any]:
        await connection.send_packed_command(b"".join(map(_packed, commands)), check_health=False)
        parser = getattr(connection, "_parser", None)
        if parser is not None:
            # the parser itself: an error reply comes back as an exception object, and none of
            # Connection.read_response's per-reply timeout and bookkeeping (the round trip
            # has its own bound), which cost more than the parsing
            return [await parser.read_response() for _ in commands]
        results: list[Any] = []
        for _ in commands:
            try:
                results.append(await connection.read_response())
            except ResponseError as error:  # one command's error: the replies stay in step
                results.append(error)
        return results


class _Shard:
    """The keys of one shard."""

    __slots__ = ("tag", "due", "leased", "seen", "open")

    def __init__(self, index: int) -> None:
        self.tag = f"{{mtt-{index}}}"
        self.due, self.leased, self.seen, self.open = (f"{self.tag}:{name}" for name in ("due", "leased", "seen", "open"))


SHARD_KEYS = tuple(_Shard(i) for i in range(SHARDS))


def _member(conf_id: str) -> bytes:
    # conf ids come from JSON and may hold lone surrogates: keep them, byte for byte
    return conf_id.encode("utf-8", "surrogatepass")


def _opened(facts: list[Fact]) -> int:
    """What facts change in the calls in progress: +1 a call started, -1 one ended."""
    return sum(1 if isinstance(f, CallStarted) else -1 for f in facts if isinstance(f, CallStarted | CallEnded))


def _pair(reply: list) -> tuple[bytes, float]:
    """(member, score) of a one-entry ZRANGE WITHSCORES reply, RESP3 [[m, s]] or RESP2 [m, s]."""
    member, score = reply[0] if isinstance(reply[0], list | tuple) else reply
    return member, float(score)


class SharedState:
    """Calls on Redis/Valkey, with `local` (this process's correlator) as the fallback."""

    def __init__(self, url: str, local: Correlator) -> None:
        if aioredis is None:
            raise RuntimeError("--state-backend needs the redis package: pip install 'mtt-call-exporter[redis]'")
        self.url = url
        self.local = local
        self.ttl, self.grace, self.max_calls = local.ttl, local.grace, local.max_calls
        self.stats = BackendStats()
        self.redis = connect(url)
        self._pipe = Pipeliner(self.redis)
        self._key_ttl_ms = int((self.ttl + KEY_TTL_MARGIN) * 1000)
        self._tokens = (f"{os.urandom(4).hex()}.{i}".encode() for i in itertools.count())
        self._sha: dict[str, str] = {}
        #: conf id -> (token, call) of this replica's last write of the call; taken out by
        #: whoever uses it, as the call is then changed in place
        self._written: dict[str, tuple[bytes, Call]] = {}
        #: conf id -> its notifications waiting for the backend, in order of receipt; the
        #: first is being applied. One task per call drains it.
        self._pending: dict[str, deque[Queued]] = {}
        self._drains: set[asyncio.Task] = set()
        #: where the result of a notification answered before it was applied goes
        self.deliver: Deliver = _ignore

    @property
    def up(self) -> bool:
        """True while Redis answers; false while correlating in local memory."""
        return self.stats.up

    @staticmethod
    def shard(conf_id: str) -> _Shard:
        """The shard of a call: stable across processes and versions."""
        return SHARD_KEYS[zlib.crc32(_member(conf_id)) % SHARDS]

    def key(self, conf_id: str) -> bytes:
        """The Redis key of one call."""
        return f"{self.shard(conf_id).tag}:call:".encode() + _member(conf_id)

    # --- notifications ----------------------------------------------------------------

    def submit(self, n: Notification, now: float, wait: bool = False,
               received: float | None = None) -> Result | asyncio.Future | None:
        """Take one notification received at `now`, without waiting for the backend.

        None: queued for the backend; the request may be answered now, and the result goes
        to `deliver` once applied. A future (with `wait`, or past 2 x MAX_QUEUED): queued,
        and the future gives the result. A result: applied in local memory right away
        (backend down, call held locally, or the backend behind by more than MAX_QUEUED).
        Notifications of one call are applied in the order they came, one at a time.
        Raises PayloadError (too_many_items) for a call with MAX_NOTIFICATIONS_PER_CALL queued.
        `received` (default `now`) is handed to `deliver` as it is.
        """
        stats = self.stats
        conf_id = n.conf_id
        chain = self._pending.get(conf_id)
        if chain is None and (not stats.up or conf_id in self.local.calls):
            stats.fallbacks += 1
            return self.local.apply(n, now)
        if chain is None and stats.queued >= MAX_QUEUED:
            if not stats.behind:
                stats.behind = True
                log.warning("state backend behind: new calls correlated in local memory",
                            extra={"backend": masked_url(self.url), "queued": stats.queued})
            stats.overflows += 1
            stats.fallbacks += 1
            return self.local.apply(n, now)
        future = asyncio.get_running_loop().create_future() if wait or stats.queued >= 2 * MAX_QUEUED else None
        if chain is None:
            self._pending[conf_id] = deque([(n, now, now if received is None else received, future)])
            task = asyncio.create_task(self._drain(conf_id))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        elif len(chain) >= MAX_NOTIFICATIONS_PER_CALL:
            raise PayloadError(Reason.TOO_MANY_ITEMS, f"call has more than {MAX_NOTIFICATIONS_PER_CALL} notifications")
        else:
            chain.append((n, now, now if received is None else received, future))
        stats.queued += 1
        return future

    async def apply(self, n: Notification, now: float) -> Result:
        """Apply one notification received at `now` to its call, in Redis if it answers."""
        result = self.submit(n, now, wait=True)
        return await result if isinstance(result, asyncio.Future) else result

    async def _drain(self, conf_id: str) -> None:
        """Apply the notifications queued for one call, in order."""
        chain = self._pending[conf_id]
        stats = self.stats
        try:
            while chain:
                n, now, received, future = chain[0]
                try:
                    result: Result | PayloadError = await self._apply(n, now)
                except PayloadError as error:
                    result = error
                except asyncio.CancelledError:  # shutdown past its bound: the rest in local memory
                    self._apply_locally(chain)
                    raise
                except Exception:  # a bug of ours: counted as refused, the rest of the call goes on
                    log.exception("failed on a queued notification")
                    result = PayloadError(Reason.INTERNAL, "internal error")
                chain.popleft()
                stats.queued -= 1
                if future is None:
                    self.deliver(n, received, result)
                elif isinstance(result, PayloadError):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            del self._pending[conf_id]
            if stats.behind and stats.queued <= MAX_QUEUED // 2:
                stats.behind = False
                log.warning("state backend caught up", extra={"backend": masked_url(self.url), "queued": stats.queued})

    def _apply_locally(self, chain: deque[Queued]) -> None:
        stats = self.stats
        while chain:
            n, now, received, future = chain.popleft()
            stats.queued -= 1
            stats.fallbacks += 1
            try:
                result: Result | PayloadError = self.local.apply(n, now)
            except PayloadError as error:
                result = error
            if future is None:
                self.deliver(n, received, result)
            elif future.done():
                pass
            elif isinstance(result, PayloadError):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _apply(self, n: Notification, now: float) -> Result:
        """One notification, in Redis if it answers and its call is not held locally."""
        stats = self.stats
        if stats.up and n.conf_id not in self.local.calls:
            try:
                return await self._update(n, now)
            except PayloadError:
                raise
            except Contended:
                log.warning("call updated concurrently too often; correlated locally")
            except Exception as error:  # noqa: BLE001 - whatever broke, the notification is not lost
                self._failed(BackendOperation.APPLY, error)
        stats.fallbacks += 1
        return self.local.apply(n, now)

    async def flush(self, timeout: float = FLUSH_SECONDS) -> None:
        """Wait up to `timeout` for the queued notifications; apply the rest in local memory."""
        if not self._drains:
            return
        _, late = await asyncio.wait(set(self._drains), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
            log.warning("state backend too slow at shutdown: queued notifications correlated locally",
                        extra={"backend": masked_url(self.url), "calls": len(late)})

    async def _update(self, n: Notification, now: float) -> tuple[bool, list[Fact]]:
        conf_id = n.conf_id
        token, call = self._written.pop(conf_id, None) or (b"", None)  # the guess
        evicted: list[Fact] = []
        if call is None and self.stats.calls >= self.max_calls:  # evict only for a call that is new
            token, data = await self._read(conf_id)
            call = self._decode(data)
            if call is None:
                evicted = await self._evict()
        for _ in range(ATTEMPTS):
            facts: list[Fact] = []
            if call is None:
                call, new = Call(now), True
                facts.append(CallStarted())
            else:
                new = False
            duplicate, more = apply(call, n, now, self.grace, labels=self.local.labels)
            result = await self._write(conf_id, token, call, _opened(facts + more), seen=now)
            if result == 1:
                if new:
                    self.stats.calls += 1
                return duplicate, facts + more + evicted
            token, data = result  # the call as it is now
            call = self._decode(data)
            self.stats.retries += 1
        raise Contended

    # --- decisions due: grace periods, TTL, capacity ----------------------------------

    async def expire(self, now: float) -> list[Fact]:
        """Claim the calls due at `now` (in every replica's index) and make their decisions."""
        if not self.stats.up:
            await self._probe()
            return []
        # nothing is decided past a notification this replica received and has not applied yet
        now = min((chain[0][1] for chain in self._pending.values()), default=now) if self._pending else now
        facts: list[Fact] = []
        try:
            for _ in range(CLAIM_ROUNDS):
                claims = await self._pipe.send(*(
                    ("EVALSHA", self._sha.get("claim", "0"), 2, s.due, s.leased, now, now + LEASE_SECONDS, CLAIM_BATCH)
                    for s in SHARD_KEYS
                ))
                if any(isinstance(c, NoScriptError) for c in claims):
                    await self._load_scripts()
                    continue
                for claimed in claims:
                    if isinstance(claimed, Exception):
                        raise claimed
                members = sorted({m.decode("utf-8", "surrogatepass") for claimed in claims for m in claimed})
                for i in range(0, len(members), EXPIRE_IN_FLIGHT):
                    results = await asyncio.gather(
                        *(self._decide(m, now) for m in members[i:i + EXPIRE_IN_FLIGHT]), return_exceptions=True
                    )
                    facts += (fact for r in results if not isinstance(r, BaseException) for fact in r)
                    for result in results:  # a contended call stays leased: retried when the lease ends
                        if isinstance(result, BaseException) and not isinstance(result, Contended):
                            raise result
                if all(len(claimed) < CLAIM_BATCH for claimed in claims):
                    break
            await self._count()
        except BACKEND_ERRORS as error:
            self._failed(BackendOperation.EXPIRE, error)
        return facts

    async def _decide(self, conf_id: str, now: float) -> list[Fact]:
        """The decisions due for one claimed call, written (which releases the claim)."""
        guess = self._written.pop(conf_id, None)  # as in `_update`
        if guess is not None:
            token, call = guess
        else:
            token, data = await self._read(conf_id)
            call = self._decode(data)
        for _ in range(ATTEMPTS):
            facts: list[Fact] = []
            if call is None:
                shard = self.shard(conf_id)
                await self._pipe.send(("ZREM", shard.leased, _member(conf_id)))
                return facts
            if call.deadline is not None and call.deadline <= now:
                settle(call, conf_id, now, facts, self.local.labels)
                call.deadline = None
            gone = call.last_seen + self.ttl <= now
            if gone:
                drop(call, conf_id, EvictionReason.TTL, facts, self.local.labels)
            # written even if unchanged: the write re-indexes the call, in the same step
            result = await self._write(conf_id, token, None if gone else call, _opened(facts), release=True)
            if result == 1:
                return facts
            token, data = result
            call = self._decode(data)
            self.stats.retries += 1
        raise Contended

    async def _evict(self) -> list[Fact]:
        """At --max-calls: drop the call seen longest ago (of the shards' oldest), claimed
        by ZREM so that one replica drops it."""
        heads = await self._pipe.send(*(("ZRANGE", s.seen, 0, 0, "WITHSCORES") for s in SHARD_KEYS))
        entries = [_pair(head) for head in heads if isinstance(head, list) and head]
        facts: list[Fact] = []
        if not entries:
            return facts
        member = min(entries, key=lambda entry: entry[1])[0]
        conf_id = member.decode("utf-8", "surrogatepass")
        (removed,) = await self._pipe.send(("ZREM", self.shard(conf_id).seen, member))
        if removed != 1:
            return facts  # another replica took it
        token, data = await self._read(conf_id)
        call = self._decode(data)
        if call is not None:
            drop(call, conf_id, EvictionReason.CAPACITY, facts, self.local.labels)
            if await self._write(conf_id, token, None, _opened(facts)) != 1:
                return []  # written meanwhile: it lives on
            self.stats.calls -= 1
        return facts

    # --- Redis plumbing -----------------------------------------------------------------

    @staticmethod
    def _decode(data: bytes | None) -> Call | None:
        """The call stored as `data`; None for none, or for data this exporter would not
        write (the write that follows, over the same token, replaces it)."""
        if data is None:
            return None
        try:
            return call_from_dict(json.loads(data))
        except (ValueError, RecursionError) as error:  # StateError, JSONDecodeError, UnicodeDecodeError
            log.warning("damaged call in the state backend, replaced", extra={"error": str(error)[:200]})
            return None

    async def _read(self, conf_id: str) -> tuple[bytes | None, bytes | None]:
        (result,) = await self._pipe.send(("HMGET", self.key(conf_id), "v", "d"))
        if isinstance(result, Exception):
            raise result
        return result[0], result[1]

    async def _write(self, conf_id: str, token: bytes | None, call: Call | None, opened: int,
                     seen: float | None = None, release: bool = False) -> Any:
        """Compare-and-set `call` (None: delete) over `token`, indexing its next due time and
        adding `opened` to the calls in progress; 1 if written, else the call as it is now:
        [token, JSON]."""
        shard, member = self.shard(conf_id), _member(conf_id)
        data = b"" if call is None else json.dumps(call_to_dict(call), separators=(",", ":")).encode()
        new = next(self._tokens)
        due = "" if call is None else next_due(call, self.ttl)
        for _ in range(2):
            (result,) = await self._pipe.send((
                "EVALSHA", self._sha.get("cas", "0"), 5, self.key(conf_id), shard.due, shard.seen, shard.leased, shard.open,
                token or b"", new, data, self._key_ttl_ms, member, due, "" if seen is None else seen, int(release), opened,
            ))
            if not isinstance(result, NoScriptError):
                break
            await self._load_scripts()  # Redis restarted, or failed over to a node without it
        if isinstance(result, Exception):
            raise result
        if result == 1:
            cache = self._written
            cache.pop(conf_id, None)
            if call is not None:
                cache[conf_id] = (new, call)
                if len(cache) > CACHED_CALLS:
                    del cache[next(iter(cache))]
        return result

    async def _count(self) -> None:
        """Calls held, and in progress, in the shared backend."""
        counts = await self._pipe.send(*(("ZCARD", s.seen) for s in SHARD_KEYS), *(("GET", s.open) for s in SHARD_KEYS))
        for count in counts:
            if isinstance(count, Exception):
                raise count
        self.stats.calls = sum(counts[:SHARDS])
        self.stats.in_progress = sum(int(count or 0) for count in counts[SHARDS:])

    async def _load_scripts(self) -> None:
        for name, source in _SCRIPTS.items():
            self._sha[name] = await self.redis.script_load(source)

    async def _probe(self) -> None:
        try:
            pool = getattr(self.redis, "connection_pool", None)
            if pool is not None:
                await pool.disconnect(inuse_connections=False)  # none of the broken connections is reused
            await self.redis.ping()
            await self._load_scripts()
            await self._count()
        except BACKEND_ERRORS as error:
            self.stats.errors[BackendOperation.PING] += 1
            log.debug("state backend still unreachable", extra={"error": str(error)})
            return
        self.stats.up = True
        log.info("state backend reachable", extra={"backend": masked_url(self.url)})

    def _failed(self, operation: BackendOperation, error: Exception) -> None:
        self.stats.errors[operation] += 1
        if self.stats.up:
            self.stats.up = False
            log.warning(
                "state backend unreachable: correlating in local memory",
                extra={"backend": masked_url(self.url), "operation": operation.value,
                       "error": f"{type(error).__name__}: {error}"[:200]},
            )

    async def start(self) -> None:
        """Connect once; if Redis does not answer, start degraded and keep probing."""
        await self._probe()
        if not self.stats.up:
            log.warning("state backend unreachable at start: correlating in local memory",
                        extra={"backend": masked_url(self.url)})

    async def close(self) -> None:
        """Close the connections (to the Sentinels too)."""
        sentinel = getattr(getattr(self.redis, "connection_pool", None), "sentinel_manager", None)
        for client in sentinel.sentinels if sentinel is not None else ():
            await client.aclose()
        await self.redis.aclose()
