"""HTTP side: receive notifications, serve /metrics and health. The only aiohttp module."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ctypes
import hmac
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from . import __version__, labelmap
from .clock import ProcessClock
from .correlator import Correlator
from .metrics import Metrics
from .model import Notification, PayloadError, Reason, mask_number, parse
from .record import Recorder
from .settings import Settings
from .state import SharedState
from .statefile import StateFile

log = logging.getLogger("mtt_exporter")

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
CORRELATOR = web.AppKey("correlator", Correlator)
#: The wall clock: receipt times compared with MTT's event times, and recorded.
CLOCK = web.AppKey("clock", Callable[[], float])
#: The clock of grace periods, TTLs and the ticker: never steps (see clock.py).
TIMER = web.AppKey("timer", ProcessClock)
READY = web.AppKey("ready", asyncio.Event)
#: Call state on Redis/Valkey (--state-backend); None: the correlator's memory only.
SHARED = web.AppKey("shared", SharedState | None)
STATE = web.AppKey("state", StateFile)
RECORDER = web.AppKey("recorder", Recorder)

#: How often grace periods and TTLs are checked.
TICK_SECONDS = 1.0
#: How often freed heap memory is handed back to the system (see `_malloc_trim`).
TRIM_SECONDS = 10.0
_FORM_TYPE = "application/x-www-form-urlencoded"
#: Paths an --allow-cidr list does not cover: orchestrators probe from their own addresses.
OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})
#: Seconds a client refused for overload is asked to wait.
RETRY_AFTER = 1


def _error(status: int, reason: Reason, message: str, **extra: Any) -> web.Response:
    return web.json_response({"status": "error", "reason": reason.value, "error": message, **extra}, status=status)


def _authorized(request: web.Request, token: bytes) -> bool:
    """The token as path segment, ?token=, Bearer, or Basic password; constant-time compare."""
    offered: list[str] = []
    if "token" in request.match_info:
        offered.append(request.match_info["token"])
    offered.extend(request.query.getall("token", []))
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        offered.append(credentials.strip())
    elif scheme.lower() == "basic":
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            offered.append(base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[2])
    ok = False
    for candidate in offered:  # compare every candidate: timing reveals nothing
        ok |= hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), token)
    return ok


class Gate:
    """Notification requests in flight, at most `limit`; `idle` is set while there are none."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def full(self) -> bool:
        return self.busy >= self.limit

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.busy += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.busy -= 1
            if not self.busy:
                self.idle.set()


GATE = web.AppKey("gate", Gate)


async def drain(app: web.Application, timeout: float) -> bool:
    """Wait up to `timeout` for the notification requests in flight to finish; True if they did.

    For shutdown, after the listeners closed and before the runner's cleanup: aiohttp
    stops reading every connection when its cleanup starts, which would cut off bodies
    still arriving.
    """
    try:
        async with asyncio.timeout(timeout):
            await app[GATE].idle.wait()
    except TimeoutError:
        return False
    return True


def client_address(
    request: web.BaseRequest, trusted: Sequence[IPv4Network | IPv6Network]
) -> IPv4Address | IPv6Address | None:
    """The client: the peer, or behind trusted proxies the rightmost untrusted X-Forwarded-For hop.

    Hops are read right to left because each proxy appends the address it saw; only
    the part appended by trusted proxies can be believed. None: no usable address.
    """
    try:
        address = ip_address(request.remote or "")
    except ValueError:
        return None
    hops = [hop.strip() for header in request.headers.getall("X-Forwarded-For", ()) for hop in header.split(",")]
    while True:
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # dual-stack listeners see IPv4 peers as ::ffff:a.b.c.d
        if not hops or not any(address in network for network in trusted):
            return address
        try:
            address = ip_address(hops.pop())
        except ValueError:
            return None


def _peer(request: web.BaseRequest) -> str:
    """Who sent the request, for logs."""
    address = client_address(request, request.app[SETTINGS].trusted_proxy)
    return "unknown" if address is None else str(address)


def _unread_encoded_body(request: web.BaseRequest) -> bool:
    """A compressed or chunked body is left unread: aiohttp would read it away after the
    answer and, if that breaks (bad gzip or chunks), drop the connection without a word,
    failing the client's next request on it. Such answers close the connection instead."""
    encoded = hdrs.CONTENT_ENCODING in request.headers or hdrs.TRANSFER_ENCODING in request.headers
    return encoded and not request.content.at_eof()


@web.middleware
async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """--allow-cidr: 403 for a client outside the listed networks (health checks excepted)."""
    settings = request.app[SETTINGS]
    if settings.allow_cidr and request.path not in OPEN_PATHS:
        address = client_address(request, settings.trusted_proxy)
        if address is None or not any(address in network for network in settings.allow_cidr):
            return _refuse(request, 403, Reason.FORBIDDEN, "client address not allowed")
    try:
        return await handler(request)
    except web.HTTPException as error:  # 404, 405 from the router
        if _unread_encoded_body(request):
            error.force_close()
        raise


def _form(text: str) -> dict[str, Any]:
    """A urlencoded body with the JSON's top-level names; `event` as JSON or event[type]=..."""
    pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    body: dict[str, Any] = {}
    event: dict[str, Any] = {}
    for key, value in pairs:
        key = key.strip()
        for prefix in ("event[", "event."):
            if key.startswith(prefix):
                event[key[len(prefix):].rstrip("]").strip()] = value
                break
        else:
            if key == "event" and value.lstrip().startswith("{"):
                value = json.loads(value)
            body[key] = value
    if event:
        body["event"] = {**event, **body["event"]} if isinstance(body.get("event"), dict) else event
    return body


def decode(body: bytes, content_type: str) -> Any:
    """Body -> JSON value, whatever the Content-Type says; urlencoded forms too."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PayloadError(Reason.MALFORMED, "body is not UTF-8") from None
    if content_type != _FORM_TYPE or text.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # ValueError: also ints beyond the digit limit
            pass
    try:
        return _form(text)
    except (ValueError, RecursionError):
        raise PayloadError(Reason.MALFORMED, "body is neither JSON nor a urlencoded form") from None


def _refuse(request: web.Request, status: int, reason: Reason, message: str, close: bool = False) -> web.Response:
    """Count a refused request, log the reason and the client (never the body), answer 4xx;
    `close`: the rest of the body is not worth reading, close the connection."""
    request.app[METRICS].reject(reason)
    log.info("rejected request", extra={"reason": reason.value, "peer": _peer(request), "error": message})
    response = _error(status, reason, message)
    if close or _unread_encoded_body(request):
        response.force_close()
    return response


async def handle_notify(request: web.Request) -> web.Response:
    """POST /notify[/{token}]: one notification (object) or a batch (array)."""
    app = request.app
    settings = app[SETTINGS]
    if settings.token is not None and not _authorized(request, settings.token.get_secret_value().encode()):
        return _refuse(request, 401, Reason.UNAUTHORIZED, "missing or wrong token")
    gate = app[GATE]
    if gate.full():  # 429, not 503: a 5xx would page for the sender's behaviour
        response = _refuse(request, 429, Reason.OVERLOADED, f"more than {gate.limit} requests at once")
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response
    with gate.held():
        return await _notify(request)


async def _notify(request: web.Request) -> web.Response:
    app = request.app
    settings, metrics = app[SETTINGS], app[METRICS]
    limit = settings.max_body_bytes
    too_large = f"body larger than {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        return _refuse(request, 413, Reason.TOO_LARGE, too_large)  # aiohttp reads the rest away, briefly
    try:
        async with asyncio.timeout(settings.read_timeout):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked or decompressed past the limit: read no further
        return _refuse(request, 413, Reason.TOO_LARGE, too_large, close=True)
    except (web.RequestPayloadError, ConnectionResetError):  # bad gzip or chunks; client gone
        return _refuse(request, 400, Reason.MALFORMED, "body cannot be read (broken encoding or connection)", close=True)
    except TimeoutError:
        return _refuse(request, 408, Reason.TIMEOUT, f"body not received within {settings.read_timeout:g} s", close=True)
    if RECORDER in app:
        app[RECORDER].write(app[CLOCK](), body, request.content_type)

    try:
        value = decode(body, request.content_type)
        if isinstance(value, list):
            if not value:
                raise PayloadError(Reason.INVALID, "empty batch")
            if len(value) > settings.max_batch_items:
                return _refuse(request, 413, Reason.TOO_MANY_ITEMS, f"batch longer than {settings.max_batch_items} items")
            items, batch = value, True
        elif isinstance(value, dict):
            items, batch = [value], False
        else:
            raise PayloadError(Reason.MALFORMED, f"expected a JSON object or array, got {type(value).__name__}")
    except PayloadError as error:
        return _refuse(request, 400, error.reason, error.message)

    received, now = app[CLOCK](), app[TIMER]()
    correlator, shared = app[CORRELATOR], app[SHARED]
    accepted = duplicates = 0
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            notification = parse(item)
            if shared is None:
                duplicate, facts = correlator.apply(notification, now)
            else:
                duplicate, facts = await shared.apply(notification, now)
        except PayloadError as error:
            metrics.reject(error.reason)
            errors.append({"index": index, "reason": error.reason.value, "error": error.message})
            continue
        metrics.record_notification(notification, received, duplicate)
        metrics.record_facts(facts)
        accepted += 1
        duplicates += duplicate
        if log.isEnabledFor(logging.DEBUG):
            _log_accepted(notification, duplicate)
    if accepted:
        metrics.last_notification = now
    if errors:
        log.info("rejected notifications", extra={"peer": _peer(request), "accepted": accepted, "errors": errors})
        if not batch:
            return _error(400, Reason(errors[0]["reason"]), errors[0]["error"])
        return web.json_response(
            {"status": "error", "accepted": accepted, "duplicates": duplicates, "errors": errors}, status=400
        )
    body = _OK_BODIES.get((accepted, duplicates))
    if body is not None:
        return web.Response(body=body, content_type="application/json", charset="utf-8")
    return web.json_response({"status": "ok", "accepted": accepted, "duplicates": duplicates})


#: The answers to a single notification, encoded once.
_OK_BODIES = {
    (1, d): json.dumps({"status": "ok", "accepted": 1, "duplicates": d}).encode() for d in (0, 1)
}


def _log_accepted(n: Notification, duplicate: bool) -> None:
    log.debug(
        "notification",
        extra={
            "event": n.event.value,
            "call_id": n.conf_id,
            "side": n.side.value,
            "number": mask_number(n.redirect_number or n.number_a),
            "cause": n.cause,
            "duplicate": duplicate,
        },
    )


def load_labels(settings: Settings) -> labelmap.LabelMap:
    """The --label-map in force at start (NO_LABELS without one); raises LabelMapError."""
    if settings.label_map is None:
        return labelmap.NO_LABELS
    return labelmap.load(settings.label_map, settings.max_lines, settings.max_destinations)


def reload_labels(app: web.Application) -> list[str]:
    """Read --label-map again (SIGHUP, POST /-/reload); returns its errors, [] when applied.

    A refused file leaves the map in force: numbers keep their names until a good file comes.
    """
    settings, metrics = app[SETTINGS], app[METRICS]
    try:
        labels = load_labels(settings)
    except labelmap.LabelMapError as error:
        metrics.record_reload(False)
        log.error("label map refused, the previous one stays in force", extra={"errors": error.errors})
        return error.errors
    app[CORRELATOR].labels = labels
    metrics.set_labels(labels)
    metrics.record_reload(True)
    log.info("label map loaded", extra={"path": str(settings.label_map), "lines": len(labels.line_values),
                                        "destinations": len(labels.destination_values)})
    return []


async def handle_reload(request: web.Request) -> web.Response:
    """POST /-/reload: reload the label map; from a loopback client, or with the token."""
    settings = request.app[SETTINGS]
    address = client_address(request, settings.trusted_proxy)
    loopback = address is not None and address.is_loopback
    if not loopback and (settings.token is None or not _authorized(request, settings.token.get_secret_value().encode())):
        return _refuse(request, 403, Reason.FORBIDDEN, "reload only from loopback or with the token")
    errors = reload_labels(request.app)
    if errors:
        return web.json_response({"status": "error", "reason": "invalid", "error": "label map refused", "errors": errors},
                                 status=400)
    return web.json_response({"status": "ok"})


async def handle_metrics(request: web.Request) -> web.Response:
    """GET /metrics: rendered in a thread so a scrape never stalls ingestion."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    output = await asyncio.get_running_loop().run_in_executor(None, encoder, request.app[METRICS].registry)
    response = web.Response(body=output, headers={"Content-Type": content_type})
    response.enable_compression()  # use aiohttp's gzip, negotiated by Accept-Encoding
    return response


async def handle_healthy(request: web.Request) -> web.Response:
    """GET /-/healthy: the process is alive."""
    return web.json_response({"status": "healthy"})


async def handle_ready(request: web.Request) -> web.Response:
    """GET /-/ready: ready to ingest (503 until start-up finished); "degraded" without Redis."""
    if request.app[READY].is_set():
        shared = request.app[SHARED]
        if shared is not None and not shared.up:
            # still 200: a 503 would take every replica out of the load balancer at once
            return web.json_response({"status": "degraded", "state_backend": "unreachable"})
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "starting"}, status=503)


async def handle_index(request: web.Request) -> web.Response:
    """GET /: what this is and where things are."""
    routes = sorted({r.resource.canonical for r in request.app.router.routes() if r.resource is not None})
    items = "".join(f"<li><code>{path}</code></li>" for path in routes)
    return web.Response(
        text=f"<!doctype html><title>MTT call exporter</title><h1>MTT call exporter {__version__}</h1>"
        f"<p>Prometheus exporter for MTT call-progress notifications.</p><ul>{items}</ul>",
        content_type="text/html",
    )


class AccessLogger(AbstractAccessLogger):
    """Access log at debug, with the token cut out of the path and query."""

    @property
    def enabled(self) -> bool:
        # read by aiohttp per connection: below debug it skips the per-request call and clock read
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        path = request.path
        if path.startswith("/notify/"):
            path = "/notify/<token>"
        self.logger.debug(
            "request",
            extra={"method": request.method, "path": path, "status": response.status,
                   "seconds": round(time, 6), "peer": request.remote},
        )


class _ClientFaults(logging.Filter):
    """aiohttp logs what a client did wrong at ERROR with a traceback: HTTP it cannot parse
    (a 400 it answers itself), a body that breaks off or does not decompress (while it
    drains the rest after our answer). Anyone could flood the log with those: one line at
    debug instead. Our own bugs still log at ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        client_fault = isinstance(error, web.RequestPayloadError | ConnectionResetError) or (
            isinstance(error, HttpProcessingError) and 400 <= (error.code or 0) < 500)
        if not client_fault:
            return True
        detail = " ".join(str(error).split())[:120]
        record.msg, record.args = f"client fault: {type(error).__name__}: {detail}", None
        record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_CLIENT_FAULTS = _ClientFaults()


def tick(app: web.Application, now: float) -> None:
    """Make the decisions due at `now` (grace periods, TTL) and record them."""
    app[METRICS].record_facts(app[CORRELATOR].expire(now))


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS).

    Bodies of every size leave glibc's heap fragmented; it keeps the freed memory, so RSS
    creeps up under varied traffic although the memory in use is flat. Trimming now and
    then keeps RSS equal to what is used: a memory alert then means a real leak.
    """
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


async def tick_shared(app: web.Application, now: float) -> None:
    """The decisions due at `now` in the shared state (or a reconnection attempt), recorded."""
    shared = app[SHARED]
    if shared is not None:
        app[METRICS].record_facts(await shared.expire(now))


async def run_tick(app: web.Application) -> None:
    """One tick of the ticker: the decisions due now on the process clock, and a flush of --record."""
    tick(app, app[TIMER]())
    await tick_shared(app, app[TIMER]())
    if RECORDER in app:
        app[RECORDER].flush()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Load the state, tick (and snapshot) while serving; at shutdown, after the last
    request finished, save the state."""
    state = app.get(STATE)
    interval = app[SETTINGS].state_interval
    if state is not None:
        app[METRICS].record_facts(state.load())
        if state.set_aside is not None:
            app[METRICS].state_set_aside.labels(reason=state.set_aside.value).inc()

    async def loop() -> None:
        running = asyncio.get_running_loop()
        next_save = running.time() + (interval or 0)
        trim, next_trim = _malloc_trim(), running.time() + TRIM_SECONDS
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                await run_tick(app)
            except Exception:  # a bug here must not stop expiry for good
                log.exception("expiry tick failed")
            if state is not None and interval is not None and running.time() >= next_save:
                next_save = running.time() + interval
                try:  # serialised and written in a thread; the snapshot itself is taken here
                    await running.run_in_executor(None, state.write, state.snapshot())
                except OSError as error:
                    log.error("cannot write the state file", extra={"path": str(state.path), "error": str(error)})
            if trim is not None and running.time() >= next_trim:
                next_trim = running.time() + TRIM_SECONDS
                await running.run_in_executor(None, trim, 0)  # in a thread: it walks the whole heap

    shared = app[SHARED]
    if shared is not None:
        await shared.start()
    task = asyncio.create_task(loop())
    app[READY].set()
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if RECORDER in app:
        app[RECORDER].close()
    if state is not None:
        state.save()  # newer than any periodic write still running: that one is skipped
    if shared is not None:
        await shared.close()


def default_registry() -> CollectorRegistry:
    """A registry with the process, platform and GC collectors, for a real process."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Server TLS context of --tls-cert/--tls-key (TLS 1.2 and up), or None."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def runner_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of the AppRunner: access log, and time limits from --read-timeout.

    `keepalive_timeout` also closes a connection that sends no complete request head in
    time (aiohttp arms it at connect), which bounds slow-header clients.
    """
    return {
        "access_log_class": AccessLogger,
        "keepalive_timeout": settings.read_timeout,
        "shutdown_timeout": settings.read_timeout,
    }


def _add_health(app: web.Application) -> None:
    app.router.add_get("/-/healthy", handle_healthy)
    app.router.add_get("/-/ready", handle_ready)
    app.router.add_post("/-/reload", handle_reload)
    app.router.add_get("/", handle_index)


def create_app(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] | None = None,
) -> web.Application:
    """The notification app; serves /metrics too unless a separate metrics listener is set.

    `clock` is the wall clock, `monotonic` the steady one the decisions run on (via a
    `ProcessClock`); by default time.monotonic, or `clock` itself when a fake clock is
    given alone (a test clock that never steps unless told to).
    """
    if monotonic is None:
        monotonic = time.monotonic if clock is time.time else clock
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[guard])
    logging.getLogger("aiohttp.server").addFilter(_CLIENT_FAULTS)  # once: the same filter object
    labels = load_labels(settings)  # a bad map stops the start, every error listed
    metrics = Metrics(registry if registry is not None else default_registry(), exemplars=settings.exemplars)
    metrics.set_labels(labels)
    correlator = Correlator(ttl=settings.call_ttl, max_calls=settings.max_calls, grace=settings.call_end_grace,
                            labels=labels)
    metrics.track(correlator.__len__)
    shared = None
    if settings.state_backend is not None:
        shared = SharedState(settings.state_backend.get_secret_value(), correlator)
        metrics.track_backend(shared.stats)
    app[SETTINGS], app[METRICS], app[CORRELATOR], app[CLOCK] = settings, metrics, correlator, clock
    app[TIMER] = ProcessClock(clock, monotonic)
    app[SHARED] = shared
    app[READY] = asyncio.Event()
    app[GATE] = Gate(settings.max_concurrent_requests)
    if settings.state_path is not None:
        app[STATE] = StateFile(settings.state_path, correlator, app[TIMER], settings.state_max_age)
        metrics.track_state_file()
    if settings.record_path is not None:
        app[RECORDER] = Recorder(settings.record_path, settings.record_max_bytes, settings.record_keep)
    app.router.add_post("/notify", handle_notify)
    app.router.add_post("/notify/{token}", handle_notify)
    if settings.metrics_listen is None:
        app.router.add_get("/metrics", handle_metrics)
    _add_health(app)
    app.cleanup_ctx.append(_lifecycle)
    return app


def create_metrics_app(main: web.Application) -> web.Application:
    """The internal listener of --metrics-listen: /metrics and health of `main`."""
    app = web.Application()
    for key in (SETTINGS, METRICS, CORRELATOR, CLOCK, READY, SHARED):
        app[key] = main[key]
    app.router.add_get("/metrics", handle_metrics)
    _add_health(app)
    return app
