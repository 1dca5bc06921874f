"""Call state shared by several replicas on Redis/Valkey (`--state-backend redis://...`).

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

Keys (a call's key carries its hash tag, so Redis Cluster works; the index keys share one):
- `mtt:call:{<conf id>}`: hash `v` (write token), `d` (JSON of `call_to_dict`); it expires
  `KEY_TTL_MARGIN` after the call TTL, a safety net: a replica deletes it at the TTL;
- `mtt:{index}:due`: conf id -> when something is next due for the call (end of a grace
  period, or its TTL). A writer lowers the score (ZADD LT) *before* its compare-and-set, so
  the score is never later than what the stored call needs, even if the writer dies;
- `mtt:{index}:leased`: conf id -> end of the lease of the replica deciding it; an entry
  is moved here atomically when claimed, so one replica takes it, and another takes over
  if that one dies before the lease ends. Deciding always writes the call (a new token), so
  a writer that read it before the claim retries and indexes its due time again;
- `mtt:{index}:seen`: conf id -> last receipt time: the oldest is evicted at `--max-calls`.

If Redis fails, notifications are correlated in local memory (the `Correlator` the default
uses), `up` turns false, and the ticker probes Redis every second until it answers. A call
that received a notification in local memory stays there until it ends or expires.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .correlator import (
    Call,
    CallStarted,
    Correlator,
    EvictionReason,
    Fact,
    apply,
    call_from_dict,
    call_to_dict,
    drop,
    settle,
)
from .model import Notification

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import NoScriptError, RedisError

    BACKEND_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, asyncio.TimeoutError)
except ImportError:  # the `redis` extra is not installed
    aioredis = None  # type: ignore[assignment]

log = logging.getLogger("mtt_exporter")

#: Redis keys outlive the call TTL by this much; replicas delete them at the TTL.
KEY_TTL_MARGIN = 600.0
#: A replica that claimed a due call has this long to decide it before another may.
LEASE_SECONDS = 10.0
#: Due calls claimed in one round trip, and rounds per tick at most.
CLAIM_BATCH = 256
CLAIM_ROUNDS = 8
#: Compare-and-set attempts before a notification is correlated locally instead.
ATTEMPTS = 16
#: Default socket timeouts: a hung Redis delays a notification by at most this.
TIMEOUT_SECONDS = 1.0
#: Notification updates and due calls handled at once (connections: their sum, plus one).
MAX_IN_FLIGHT = 64
EXPIRE_IN_FLIGHT = 16
#: Calls whose last write by this replica is remembered, to write without reading first.
CACHED_CALLS = 10_000

# KEYS[1]: call; ARGV: expected token ("" = absent), new token, JSON ("" = delete), TTL ms.
# Returns 1 when written, else the call as it is: {token, JSON} ({nil, nil}: none).
_CAS = """
local current = redis.call('HMGET', KEYS[1], 'v', 'd')
if (current[1] or '') ~= ARGV[1] then return current end
if ARGV[3] == '' then redis.call('DEL', KEYS[1]) return 1 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
# KEYS: due, leased; ARGV: now, lease end, most members. Expired leases first, then due.
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
    #: calls in the shared backend, as of the last tick (the same on every replica)
    calls: int = 0
    fallbacks: int = 0
    retries: int = 0
    errors: dict[BackendOperation, int] = field(default_factory=lambda: dict.fromkeys(BackendOperation, 0))


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


def next_due(call: Call, ttl: float) -> float:
    """When the call next needs a decision: its grace deadline, else its TTL."""
    expiry = call.last_seen + ttl
    deadline = call.deadline
    return deadline if deadline is not None and deadline < expiry else expiry


class Pipeliner:
    """Commands of concurrent requests sent together: one pipeline (one round trip) at a
    time carries everything queued while the previous one was on its way. The commands of
    one request stay together and in order. Python's cost per round trip, not Redis's,
    limits a replica, so this multiplies its throughput under load."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._queue: list[tuple[tuple[tuple[object, ...], ...], asyncio.Future]] = []
        self._sender: asyncio.Task | None = None

    async def send(self, *commands: tuple[object, ...]) -> list[Any]:
        """Results of `commands` (an exception object for one that failed); raises when
        the connection failed."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((commands, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                pipe = self.redis.pipeline(transaction=False)
                for commands, _ in batch:
                    for command in commands:
                        pipe.execute_command(*command)
                try:
                    results = await pipe.execute(raise_on_error=False)
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                start = 0
                for commands, future in batch:
                    if not future.done():
                        future.set_result(results[start:start + len(commands)])
                    start += len(commands)
        finally:
            self._sender = None


class SharedState:
    """Calls on Redis/Valkey, with `local` (this process's correlator) as the fallback."""

    def __init__(self, url: str, local: Correlator, prefix: str = "mtt") -> None:
        if aioredis is None:
            raise RuntimeError("--state-backend needs the redis package: pip install 'mtt-call-exporter[redis]'")
        self.url = url
        self.local = local
        self.ttl, self.grace, self.max_calls = local.ttl, local.grace, local.max_calls
        self.stats = BackendStats()
        self.redis = aioredis.Redis.from_url(
            url,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),  # a failure means fallback at once, not a wait
            client_name="mtt-exporter",
            max_connections=MAX_IN_FLIGHT + EXPIRE_IN_FLIGHT + 1,
        )
        self._gate = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._pipe = Pipeliner(self.redis)
        self._prefix = prefix
        self._due, self._leased, self._seen = (f"{prefix}:{{index}}:{name}" for name in ("due", "leased", "seen"))
        self._key_ttl_ms = int((self.ttl + KEY_TTL_MARGIN) * 1000)
        self._tokens = (f"{os.urandom(4).hex()}.{i}".encode() for i in itertools.count())
        self._sha: dict[str, str] = {}
        #: conf id -> (token, JSON) of this replica's last write of the call
        self._written: dict[str, tuple[bytes, bytes]] = {}
        #: conf id -> done when the last request queued for the call is
        self._busy: dict[str, asyncio.Future] = {}

    @property
    def up(self) -> bool:
        """True while Redis answers; false while correlating in local memory."""
        return self.stats.up

    def key(self, conf_id: str) -> str:
        """The Redis key of one call."""
        return f"{self._prefix}:call:{{{conf_id}}}"

    # --- notifications ----------------------------------------------------------------

    async def apply(self, n: Notification, now: float) -> tuple[bool, list[Fact]]:
        """Apply one notification received at `now` to its call, in Redis if it answers."""
        stats = self.stats
        if stats.up and n.conf_id not in self.local.calls:
            async with self._gate:
                if stats.up:  # it may have gone down while this waited
                    try:
                        return await self._apply(n, now)
                    except Contended:
                        log.warning("call updated concurrently too often; correlated locally")
                    except BACKEND_ERRORS as error:
                        self._failed(BackendOperation.APPLY, error)
        stats.fallbacks += 1
        return self.local.apply(n, now)

    async def _apply(self, n: Notification, now: float) -> tuple[bool, list[Fact]]:
        """One request at a time per call on this replica: the next waits for the one
        before, instead of racing it and retrying."""
        conf_id = n.conf_id
        before = self._busy.get(conf_id)
        done = self._busy[conf_id] = asyncio.get_running_loop().create_future()
        try:
            if before is not None:
                await before
            return await self._update(n, now)
        finally:
            done.set_result(None)
            if self._busy.get(conf_id) is done:
                del self._busy[conf_id]

    async def _update(self, n: Notification, now: float) -> tuple[bool, list[Fact]]:
        conf_id = n.conf_id
        key = self.key(conf_id)
        token, data = self._written.get(conf_id, (b"", None))  # the guess
        evicted: list[Fact] = []
        if data is None and self.stats.calls >= self.max_calls:  # evict only for a call that is new
            token, data = await self._read(key)
            if data is None:
                evicted = await self._evict()
        for _ in range(ATTEMPTS):
            call = self._decode(data)
            facts: list[Fact] = []
            if call is None:
                call, old_due = Call(now), None
                facts.append(CallStarted())
            else:
                old_due = next_due(call, self.ttl)
            duplicate, more = apply(call, n, now, self.grace)
            facts += more
            due = next_due(call, self.ttl)
            write, written = self._cas(key, token, call)
            commands = [write, ("ZADD", self._seen, "GT", now, conf_id)]
            if old_due is None or due < old_due:
                commands.insert(0, ("ZADD", self._due, "LT", due, conf_id))  # before the write: never late
            result = (await self._pipe.send(*commands))[-2]
            if result == 1:
                self._remember(conf_id, written)
                if old_due is None:
                    self.stats.calls += 1
                return duplicate, facts + evicted
            if isinstance(result, NoScriptError):
                await self._load_scripts()
            elif isinstance(result, Exception):
                raise result
            else:  # the call as it is now
                token, data = result
                self.stats.retries += 1
        raise Contended

    # --- decisions due: grace periods, TTL, capacity ----------------------------------

    async def expire(self, now: float) -> list[Fact]:
        """Claim the calls due at `now` (in every replica's index) and make their decisions."""
        if not self.stats.up:
            await self._probe()
            return []
        facts: list[Fact] = []
        try:
            for _ in range(CLAIM_ROUNDS):
                claimed = await self._script("claim", [self._due, self._leased], [now, now + LEASE_SECONDS, CLAIM_BATCH])
                members = sorted(set(claimed))
                results: list = []
                for i in range(0, len(members), EXPIRE_IN_FLIGHT):
                    results += await asyncio.gather(
                        *(self._expire_call(m.decode(), now) for m in members[i:i + EXPIRE_IN_FLIGHT]),
                        return_exceptions=True,
                    )
                facts += (fact for r in results if not isinstance(r, BaseException) for fact in r)
                for result in results:  # a contended call stays leased: retried when the lease ends
                    if isinstance(result, BaseException) and not isinstance(result, Contended):
                        raise result
                if len(claimed) < CLAIM_BATCH:
                    break
            self.stats.calls = await self.redis.zcard(self._seen)
        except BACKEND_ERRORS as error:
            self._failed(BackendOperation.EXPIRE, error)
        return facts

    async def _expire_call(self, conf_id: str, now: float) -> list[Fact]:
        """The decisions due for one claimed call, written; then its next due time indexed."""
        key = self.key(conf_id)
        token, data = await self._read(key)
        for _ in range(ATTEMPTS):
            call = self._decode(data)
            facts: list[Fact] = []
            if call is None:
                await self._finish(conf_id, None)
                return facts
            if call.deadline is not None and call.deadline <= now:
                settle(call, conf_id, now, facts)
                call.deadline = None
            gone = call.last_seen + self.ttl <= now
            if gone:
                drop(call, conf_id, EvictionReason.TTL, facts)
            result, written = await self._write(key, token, None if gone else call)
            if result == 1:
                self._remember(conf_id, written)
                await self._finish(conf_id, None if gone else next_due(call, self.ttl))
                return facts
            token, data = result
            self.stats.retries += 1
        raise Contended

    async def _evict(self) -> list[Fact]:
        """At --max-calls: drop the call seen longest ago (claimed by ZPOPMIN: one replica)."""
        facts: list[Fact] = []
        for member, _ in await self.redis.zpopmin(self._seen):
            conf_id = member.decode()
            key = self.key(conf_id)
            token, data = await self._read(key)
            call = self._decode(data)
            if call is None:
                continue
            more: list[Fact] = []
            drop(call, conf_id, EvictionReason.CAPACITY, more)
            result, written = await self._write(key, token, None)
            if result == 1:  # else it was written meanwhile: it lives on
                self._remember(conf_id, written)
                self.stats.calls -= 1
                facts += more
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

    def _cas(self, key: str, token: bytes | None, call: Call | None) -> tuple[tuple[object, ...], tuple[bytes, bytes | None]]:
        """The compare-and-set of `call` (None: delete) over `token`, and what it writes:
        (new token, JSON)."""
        data = None if call is None else json.dumps(call_to_dict(call), separators=(",", ":")).encode()
        new = next(self._tokens)
        return ("EVALSHA", self._sha.get("cas", "0"), 1, key, token or b"", new, data or b"", self._key_ttl_ms), (new, data)

    async def _read(self, key: str) -> tuple[bytes | None, bytes | None]:
        (result,) = await self._pipe.send(("HMGET", key, "v", "d"))
        if isinstance(result, Exception):
            raise result
        return result[0], result[1]

    async def _write(self, key: str, token: bytes | None, call: Call | None) -> tuple[Any, tuple[bytes, bytes | None]]:
        """The compare-and-set alone: (1 or the call as it is now, what it wrote)."""
        for _ in range(2):
            command, written = self._cas(key, token, call)
            (result,) = await self._pipe.send(command)
            if not isinstance(result, NoScriptError):
                break
            await self._load_scripts()
        if isinstance(result, Exception):
            raise result
        return result, written

    async def _finish(self, conf_id: str, due: float | None) -> None:
        """Release the claim on a decided call and index its next due time; forget a call gone."""
        commands: list[tuple[object, ...]] = [("ZREM", self._leased, conf_id)]
        if due is None:
            commands.append(("ZREM", self._seen, conf_id))
        else:
            commands.append(("ZADD", self._due, "LT", due, conf_id))
        for result in await self._pipe.send(*commands):
            if isinstance(result, Exception):
                raise result

    def _remember(self, conf_id: str, written: tuple[bytes, bytes | None]) -> None:
        cache = self._written
        cache.pop(conf_id, None)
        if written[1] is not None:
            cache[conf_id] = written  # type: ignore[assignment]
            if len(cache) > CACHED_CALLS:
                del cache[next(iter(cache))]

    async def _script(self, name: str, keys: list[str], args: list[object]) -> Any:
        try:
            return await self.redis.evalsha(self._sha.get(name, "0"), len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted, or failed over to a replica without the script
            await self._load_scripts()
            return await self.redis.evalsha(self._sha[name], len(keys), *keys, *args)

    async def _load_scripts(self) -> None:
        for name, source in _SCRIPTS.items():
            self._sha[name] = await self.redis.script_load(source)

    async def _probe(self) -> None:
        try:
            await self.redis.connection_pool.disconnect()  # none of the broken connections is reused
            await self.redis.ping()
            await self._load_scripts()
            self.stats.calls = await self.redis.zcard(self._seen)
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
                extra={"backend": masked_url(self.url), "operation": operation.value, "error": str(error)},
            )

    async def start(self) -> None:
        """Connect once; if Redis does not answer, start degraded and keep probing."""
        await self._probe()
        if not self.stats.up:
            log.warning("state backend unreachable at start: correlating in local memory",
                        extra={"backend": masked_url(self.url)})

    async def close(self) -> None:
        """Close the connections."""
        await self.redis.aclose()
