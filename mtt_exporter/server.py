"""HTTP side: receive notifications, serve /metrics and health. The only aiohttp module."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import hmac
import json
import logging
import resource
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from . import __version__, labelmap
from .clock import ProcessClock
from .correlator import Correlator
from .log import SUMMARY_SECONDS, RateLimitedLog, RefusalLog, mask_secrets
from .metrics import Metrics
from .model import ROUTING_MESSAGE, Notification, PayloadError, Reason, Wire, decode_wire, mask_number, parse, routing_request
from .record import Recorder
from .settings import Settings
from .state import SharedState
from .statefile import StateFile

log = logging.getLogger("mtt_exporter")
_monotonic = time.monotonic

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
REFUSALS = web.AppKey("refusals", RefusalLog)
#: Tracebacks of the exporter's own bugs, one line per interval at most.
BUGS = web.AppKey("bugs", RateLimitedLog)

#: How often grace periods and TTLs are checked.
TICK_SECONDS = 1.0
#: How often freed heap memory is handed back to the system (see `_malloc_trim`).
TRIM_SECONDS = 10.0
_FORM_TYPE = "application/x-www-form-urlencoded"
#: Paths an --allow-cidr list does not cover: orchestrators probe from their own addresses.
OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})
#: Seconds a client refused for overload is asked to wait.
RETRY_AFTER = 1
#: File descriptors kept free of connections: the state and record files, Redis, logs (128),
#: and three bursts of accepts (asyncio accepts up to the listen backlog, 128, per wake-up
#: before any is admitted, and the connections closed to make room close a turn later).
FD_RESERVE = 128 + 3 * 128
#: Most connections by default, whatever the fd limit: each may buffer a request head
#: (MAX_HEAD_BYTES) and a read buffer, see README "Memory bound of the HTTP side".
DEFAULT_MAX_CONNECTIONS = 512
#: Bounds of a request head, checked by aiohttp's parser as it arrives (400 malformed beyond):
#: the request line, each header line, and the number of headers. Prometheus, MTT and the
#: probes send a few short headers; a header flood buffers at most ~MAX_HEAD_BYTES a connection.
MAX_LINE_BYTES = 2048
MAX_HEADERS = 32
MAX_HEAD_BYTES = MAX_LINE_BYTES * (MAX_HEADERS + 1)


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
        with contextlib.suppress(ValueError):  # binascii.Error, UnicodeDecodeError, non-ASCII input: 401
            offered.append(base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[2])
    ok = False
    for candidate in offered:  # compare every candidate: timing reveals nothing
        ok |= hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), token)
    return ok


class Gate:
    """Notification requests being processed (body in), at most `limit`; all requests in
    flight, bodies still arriving included, in `open`, and `idle` set while there are none.

    Only a request whose body is in takes a slot: a sender trickling its body (slowloris)
    holds a connection for at most --read-timeout but never the capacity fast senders need.
    """

    def __init__(self, limit: int, budget: int = 0) -> None:
        self.limit = limit
        self.busy = 0
        self.open = 0
        #: bytes all bodies in flight may take at once (0: no bound), and those received and held now
        self.budget = budget
        self.buffered = 0
        self.idle = asyncio.Event()
        self.idle.set()
        # reusable contexts (classes, not generators: two fewer objects and frames a request)
        self._entered, self._held = _Entered(self), _Held(self)

    def full(self) -> bool:
        return self.busy >= self.limit

    def entered(self) -> _Entered:
        """A request in flight, its body perhaps still arriving: for `drain`, takes no slot."""
        return self._entered

    def reserved(self) -> _Reserved:
        """The body budget a request's bytes are charged to as they arrive, while read and applied."""
        return _Reserved(self)

    def held(self) -> _Held:
        """A slot, while the notifications of a received body are applied."""
        return self._held


class _Entered:
    __slots__ = ("gate",)

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __enter__(self) -> None:
        self.gate.open += 1
        self.gate.idle.clear()

    def __exit__(self, *_: object) -> None:
        gate = self.gate
        gate.open -= 1
        if not gate.open:
            gate.idle.set()


class _Held:
    __slots__ = ("gate",)

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __enter__(self) -> None:
        self.gate.busy += 1

    def __exit__(self, *_: object) -> None:
        self.gate.busy -= 1


class _Reserved:
    """Body bytes of one request charged to the shared budget as they arrive (never before):
    a slow sender holds only what it has sent; all of it is given back on exit, whatever the path."""

    __slots__ = ("gate", "size")

    def __init__(self, gate: Gate) -> None:
        self.gate, self.size = gate, 0

    def take(self, size: int) -> bool:
        """Charge `size` more bytes; False (nothing charged) when they would pass the budget."""
        gate = self.gate
        if gate.budget and gate.buffered + size > gate.budget:
            return False
        gate.buffered += size
        self.size += size
        return True

    def __enter__(self) -> _Reserved:
        return self

    def __exit__(self, *_: object) -> None:
        self.gate.buffered -= self.size
        self.size = 0


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
    """--allow-cidr: 403 for a client outside the listed networks (health checks excepted).

    Installed only with --allow-cidr: a middleware costs every request (aiohttp wraps the
    handler), and the router never answers by itself (every path and method has a handler).
    """
    settings = request.app[SETTINGS]
    if request.path not in OPEN_PATHS:
        address = client_address(request, settings.trusted_proxy)
        if address is None or not any(address in network for network in settings.allow_cidr):
            return _refuse(request, 403, Reason.FORBIDDEN, "client address not allowed")
    return await handler(request)


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


_EXPECTED_BODY = "expected a JSON notification (object) or batch (array), or a urlencoded form"


def decode(body: bytes, content_type: str) -> Any:
    """Body -> JSON value, whatever the Content-Type says; urlencoded forms too. The usual
    notification (or a batch of them) comes as `Wire`s, typed in one step."""
    if content_type.startswith("multipart/"):
        raise PayloadError(Reason.MALFORMED, f"body is {content_type}, which is not read: {_EXPECTED_BODY}")
    typed = decode_wire(body)
    if typed is not None:
        return typed
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PayloadError(Reason.MALFORMED, "body is not UTF-8") from None
    if not text.strip():
        raise PayloadError(Reason.MALFORMED, f"empty body: {_EXPECTED_BODY}")
    try:
        return json.loads(text)  # first whatever the Content-Type: curl -d sends JSON as a form
    except (ValueError, RecursionError):  # ValueError: also ints beyond the digit limit
        pass
    if text.lstrip()[:1] in ("{", "[", '"'):
        raise PayloadError(Reason.MALFORMED, "body is not valid JSON (it starts like JSON)")
    try:
        return _form(text)
    except (ValueError, RecursionError):
        raise PayloadError(Reason.MALFORMED, f"body is neither JSON nor a urlencoded form: {_EXPECTED_BODY}") from None


def _refuse(request: web.Request, status: int, reason: Reason, message: str, close: bool = False) -> web.Response:
    """Count a refused request, log the reason and the client (never the body), answer 4xx;
    `close`: the rest of the body is not worth reading, close the connection."""
    request.app[METRICS].reject(reason)
    request.app[REFUSALS].add(time.monotonic(), reason.value, _peer(request), message)
    response = _error(status, reason, message)
    if close or _unread_encoded_body(request):
        response.force_close()
        # nor read the rest away after the answer (aiohttp lingers up to lingering_time for it)
        if isinstance(request.protocol, _Handler):
            request.protocol.no_lingering()
    return response


async def handle_notify(request: web.Request) -> web.Response:
    """POST /notify[/{token}][/]: one notification (object) or a batch (array)."""
    app = request.app
    settings = app[SETTINGS]
    if settings.token is not None and not _authorized(request, settings.token.get_secret_value().encode()):
        return _refuse(request, 401, Reason.UNAUTHORIZED, "missing or wrong token")
    gate = app[GATE]
    with gate.entered(), gate.reserved() as budget:  # charged per chunk received: memory stays bounded
        body = await _read_body(request, budget)
        if isinstance(body, web.Response):
            return body
        if gate.full():  # 429, not 503: a 5xx would page for the sender's behaviour
            response = _refuse(request, 429, Reason.OVERLOADED, f"more than {gate.limit} requests at once")
            response.headers["Retry-After"] = str(RETRY_AFTER)
            return response
        with gate.held():
            try:
                return await _notify(request, body)
            except Exception:  # a bug of ours: counted and answered, never an unhandled 500
                app[BUGS].error(time.monotonic(), "failed on a request", exc_info=True)
                return _refuse(request, 400, Reason.INTERNAL, _INTERNAL_MESSAGE, close=True)


_INTERNAL_MESSAGE = "the exporter failed on this notification (its bug, logged); nothing of it was kept"


async def _read_body(request: web.Request, budget: _Reserved) -> bytes | web.Response:
    """The body, each chunk charged to `budget` as it arrives (a sender holds only the bytes it sent);
    a chunk that would pass --max-buffered-bytes: 429 and close."""
    settings = request.app[SETTINGS]
    limit = settings.max_body_bytes
    too_large = f"body larger than {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        return _refuse(request, 413, Reason.TOO_LARGE, too_large)  # aiohttp reads the rest away, briefly
    content = request.content
    try:
        if content.is_eof():  # the body came with the head, as a notification's does: no wait, no timer
            body = await request.read()
            return body if budget.take(len(body)) else _over_budget(request)
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(settings.read_timeout):
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:  # chunked or decompressed past the limit: read no further
                    return _refuse(request, 413, Reason.TOO_LARGE, too_large, close=True)
                if not budget.take(len(chunk)):
                    return _over_budget(request)
                chunks.append(chunk)
        return b"".join(chunks)
    except web.HTTPRequestEntityTooLarge:
        return _refuse(request, 413, Reason.TOO_LARGE, too_large, close=True)
    except (web.RequestPayloadError, ConnectionResetError):  # bad gzip or chunks; client gone
        return _refuse(request, 400, Reason.MALFORMED, "body cannot be read (broken encoding or connection)", close=True)
    except TimeoutError:
        return _refuse(request, 408, Reason.TIMEOUT, f"body not received within {settings.read_timeout:g} s", close=True)


def _over_budget(request: web.Request) -> web.Response:
    budget = request.app[GATE].budget
    response = _refuse(request, 429, Reason.OVERLOADED, f"more than {budget} body bytes in flight", close=True)
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


async def _notify(request: web.Request, body: bytes) -> web.Response:
    app = request.app
    settings, metrics = app[SETTINGS], app[METRICS]
    if RECORDER in app:
        app[RECORDER].write(app[CLOCK](), body, request.content_type)

    try:
        value = decode(body, request.content_type)
        if isinstance(value, list):
            if not value:
                raise PayloadError(Reason.INVALID, "empty batch: expected at least one notification in the array")
            if len(value) > settings.max_batch_items:
                return _refuse(request, 413, Reason.TOO_MANY_ITEMS, f"batch longer than {settings.max_batch_items} items")
            items, batch = value, True
        elif isinstance(value, Wire):
            items, batch = [value], False
        elif isinstance(value, dict):
            if routing_request(value):
                raise PayloadError(Reason.ROUTING_REQUEST, ROUTING_MESSAGE)
            items, batch = [value], False
        else:
            kind = "a string" if isinstance(value, str) else "null" if value is None else (
                "true/false" if isinstance(value, bool) else "a number")
            raise PayloadError(Reason.MALFORMED, f"body is JSON {kind}, not a notification: expected a JSON object or array")
    except PayloadError as error:
        return _refuse(request, 400, error.reason, error.message)

    received, now = app[CLOCK](), app[TIMER]()
    correlator, shared = app[CORRELATOR], app[SHARED]
    accepted = duplicates = queued = 0
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            notification = parse(item, received)  # event times are wall-clock Unix seconds
            if shared is None:
                duplicate, facts = correlator.apply(notification, now)
            else:  # answered once queued: recorded by `_deliver` when the backend has applied it
                result = shared.submit(notification, now, received=received)
                if result is None:
                    accepted += 1
                    queued += 1
                    continue
                duplicate, facts = result if isinstance(result, tuple) else await result
        except PayloadError as error:
            errors.append({"index": index, "reason": error.reason.value, "error": error.message})
            continue
        except Exception:  # a bug of ours: the correlator kept nothing of it (see Correlator.apply)
            app[BUGS].error(time.monotonic(), "failed on a notification", exc_info=True)
            errors.append({"index": index, "reason": Reason.INTERNAL.value, "error": _INTERNAL_MESSAGE})
            continue
        metrics.record_notification(notification, received, duplicate)
        metrics.record_facts(facts)
        accepted += 1
        duplicates += duplicate
        if log.isEnabledFor(logging.DEBUG):
            _log_accepted(notification, duplicate)
    if accepted:  # wall clock: alerts compare it with Prometheus' time()
        metrics.last_notification = received
    if errors:
        _count_errors(request, errors)
        if not batch:
            return _error(400, Reason(errors[0]["reason"]), errors[0]["error"])
        return web.json_response(
            {"status": "error", "accepted": accepted, "duplicates": duplicates, "errors": errors}, status=400
        )
    if queued:  # their duplicates are not known yet: counted in the metrics, not here
        body = _QUEUED_BODY if accepted == 1 else None
        if body is not None:
            return web.Response(body=body, content_type="application/json", charset="utf-8")
        return web.json_response({"status": "ok", "accepted": accepted, "duplicates": duplicates, "queued": queued})
    body = _OK_BODIES.get((accepted, duplicates))
    if body is not None:
        return web.Response(body=body, content_type="application/json", charset="utf-8")
    return web.json_response({"status": "ok", "accepted": accepted, "duplicates": duplicates})


def _count_errors(request: web.Request, errors: list[dict[str, Any]]) -> None:
    """Count refused notifications by reason; one note per reason to the refusal log, not one per item."""
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for error in errors:
        by_reason.setdefault(error["reason"], []).append(error)
    metrics, refusals, now, peer = request.app[METRICS], request.app[REFUSALS], time.monotonic(), _peer(request)
    for reason, items in by_reason.items():
        metrics.reject(Reason(reason), len(items))
        refusals.add(now, reason, peer, f"item {items[0]['index']}: {items[0]['error']}", len(items))


async def handle_not_found(request: web.Request) -> web.Response:
    """Any other path: the JSON error body, counted (the likeliest misconfiguration of event_URL)."""
    return _refuse(request, 404, Reason.NOT_FOUND, "no such path: notifications go to POST /notify or /notify/<token>")


def _wrong_method(allowed: list[str]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Handler of another method on a known path: 405 with Allow, as JSON, counted."""
    allow = ", ".join(allowed)

    async def handle_wrong_method(request: web.Request) -> web.Response:
        method = ascii(request.method)[1:-1][:16]
        response = _refuse(request, 405, Reason.METHOD_NOT_ALLOWED, f"method {method} not allowed here: use {allow}")
        response.headers["Allow"] = allow
        return response

    return handle_wrong_method


#: The answers to a single notification, encoded once.
_OK_BODIES = {
    (1, d): json.dumps({"status": "ok", "accepted": 1, "duplicates": d}).encode() for d in (0, 1)
}
_QUEUED_BODY = json.dumps({"status": "ok", "accepted": 1, "duplicates": 0, "queued": 1}).encode()


def _deliver(metrics: Metrics) -> Callable[[Notification, float, Any], None]:
    """Records a notification that was answered before the state backend applied it."""

    def deliver(n: Notification, received: float, result: Any) -> None:
        if isinstance(result, PayloadError):  # too many notifications for its call: refused late
            metrics.reject(result.reason)
            log.debug("rejected queued notification", extra={"reason": result.reason.value, "error": result.message})
            return
        duplicate, facts = result
        metrics.record_notification(n, received, duplicate)
        metrics.record_facts(facts)
        if log.isEnabledFor(logging.DEBUG):
            _log_accepted(n, duplicate)

    return deliver


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


#: headers a reverse proxy adds: a request carrying one is not trusted as loopback for /-/reload
_FORWARDING = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
#: at most one reload a second (a map at the caps costs ~135 ms of the event loop)
RELOAD_INTERVAL = 1.0
LAST_RELOAD = web.AppKey("last_reload", list[float])


async def handle_reload(request: web.Request) -> web.Response:
    """POST /-/reload: reload the label map; from a loopback client that came through no proxy
    (no forwarding header: behind a same-host proxy every client is loopback), or with the token."""
    settings = request.app[SETTINGS]
    address = client_address(request, settings.trusted_proxy)
    loopback = (address is not None and address.is_loopback
                and not any(header in request.headers for header in _FORWARDING))
    if not loopback and (settings.token is None or not _authorized(request, settings.token.get_secret_value().encode())):
        return _refuse(request, 403, Reason.FORBIDDEN, "reload only from loopback (not through a proxy) or with the token")
    last, now = request.app[LAST_RELOAD], time.monotonic()
    if now - last[0] < RELOAD_INTERVAL:
        response = _refuse(request, 429, Reason.OVERLOADED, f"at most one reload per {RELOAD_INTERVAL:g} s")
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response
    last[0] = now
    errors = reload_labels(request.app)
    if errors:
        return web.json_response({"status": "error", "reason": "invalid", "error": "label map refused", "errors": errors},
                                 status=400)
    return web.json_response({"status": "ok"})


async def handle_metrics(request: web.Request) -> web.Response:
    """GET /metrics: rendered on the event loop; a scrape formats only the series that changed
    since the last one (milliseconds even at 50,000 series), so no thread fights ingestion for the GIL."""
    headers = request.headers
    body, answer = request.app[METRICS].exposition(headers.get("Accept", ""), headers.get("Accept-Encoding", ""))
    return web.Response(body=body, headers=answer)  # gzip: pieces of families that did not change are kept


async def handle_healthy(request: web.Request) -> web.Response:
    """GET /-/healthy: the process is alive."""
    return web.json_response({"status": "healthy"})


async def handle_ready(request: web.Request) -> web.Response:
    """GET /-/ready: ready to ingest (503 until start-up finished); "degraded" without Redis."""
    if request.app[READY].is_set():
        shared = request.app[SHARED]
        if shared is not None and (not shared.up or shared.stats.behind):
            # still 200: a 503 would take every replica out of the load balancer at once
            problem = "unreachable" if not shared.up else "behind"
            return web.json_response({"status": "degraded", "state_backend": problem})
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "starting"}, status=503)


async def handle_index(request: web.Request) -> web.Response:
    """GET /: what this is and where things are."""
    routes = sorted({r.resource.canonical for r in request.app.router.routes()
                     if r.resource is not None and r.method != hdrs.METH_ANY})  # not the JSON 404/405 fallbacks
    items = "".join(f"<li><code>{path}</code></li>" for path in routes)
    return web.Response(
        text=f"<!doctype html><title>MTT call exporter</title><h1>MTT call exporter {__version__}</h1>"
        f"<p>Prometheus exporter for MTT call-progress notifications.</p><ul>{items}</ul>",
        content_type="text/html",
    )


#: Characters of a path kept in an access-log line (escaped by the JSON format, so at most twice).
ACCESS_PATH_CHARS = 64
#: Access-log lines per interval (SUMMARY_SECONDS) at most; the next line says how many were not written.
ACCESS_LINES = 100


class AccessLogger(AbstractAccessLogger):
    """Access log at debug, with the token cut out of the path and query.

    Refused requests (4xx) get no line of their own: the refusal summary has them, rate-limited.
    Served ones get one line of bounded size, at most ACCESS_LINES per interval, so even at
    debug the log grows by a few kB per 10 s at most, whatever is sent.
    """

    lines = 0
    interval_end = 0.0
    unlogged = 0

    @property
    def enabled(self) -> bool:
        # read by aiohttp per connection: below debug it skips the per-request call and clock read
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.DEBUG) or response.status >= 400:
            return
        cls, now = AccessLogger, _monotonic()
        if now >= cls.interval_end:
            cls.interval_end, cls.lines = now + SUMMARY_SECONDS, 0
        if cls.lines >= ACCESS_LINES:
            cls.unlogged += 1
            return
        cls.lines += 1
        # masked whole, then cut: a cut token would no longer match (the path is at most MAX_LINE_BYTES)
        path = mask_secrets(request.raw_path, _CLIENT_FAULTS.secrets)[:ACCESS_PATH_CHARS]
        extra = {"method": request.method[:16], "path": path, "status": response.status, "seconds": round(time, 6),
                 "peer": request.remote}
        if cls.unlogged:
            extra["unlogged"], cls.unlogged = cls.unlogged, 0
        self.logger.debug("request", extra=extra)


class _ClientFaults(logging.Filter):
    """aiohttp logs what a client did wrong at ERROR with a traceback: HTTP it cannot parse
    (a 400 it answers itself), a body that breaks off or does not decompress (while it
    drains the rest after our answer). Anyone could flood the log with those: one line at
    debug instead. Our own bugs still log at ERROR."""

    def __init__(self) -> None:
        super().__init__()
        #: tokens of the apps created in this process, masked wherever they appear
        self.secrets: set[str] = set()
        #: tracebacks of our own bugs: one per interval, the next says how many were not written
        self.next_bug = 0.0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        client_fault = isinstance(error, web.RequestPayloadError | ConnectionResetError) or (
            isinstance(error, HttpProcessingError) and 400 <= (error.code or 0) < 500)
        if not client_fault:
            if record.levelno < logging.ERROR:
                return True
            now = _monotonic()  # a bug any client can trigger must not flood the log either
            if now < self.next_bug:
                self.suppressed += 1
                return False
            record.repeated, self.next_bug, self.suppressed = self.suppressed, now + SUMMARY_SECONDS, 0
            return True
        # aiohttp's texts quote the request line (and with it a token): masked, then cut
        detail = mask_secrets(" ".join(str(error).split()), self.secrets)[:120]
        detail = detail.encode("utf-8", "backslashreplace").decode()
        record.msg, record.args = f"client fault: {type(error).__name__}: {detail}", None
        record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_CLIENT_FAULTS = _ClientFaults()


#: Sent to a connection beyond --max-connections, before it is closed.
_TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
) % ((len(body := json.dumps({"status": "error", "reason": Reason.TOO_MANY_CONNECTIONS.value,
                                  "error": "too many open connections; try again"}).encode())), body)


#: Kernel send buffer of a connection (Linux doubles it): a /metrics answer fits many times over.
SEND_BUFFER_BYTES = 64 * 1024

#: Requests pipelined on a connection queued unanswered at most; reading pauses beyond.
PIPELINED = 2

#: Bytes at the start of a connection kept to recover requests pipelined before garbage.
SALVAGE_BYTES = 16 * 1024


class _Handler(RequestHandler):
    """aiohttp's connection protocol with --max-connections, JSON protocol-error answers, and
    the requests pipelined ahead of unparsable bytes still served."""

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._parser_options = {k: kwargs[k] for k in ("max_line_size", "max_field_size", "max_headers") if k in kwargs}
        # fewer pipelined requests queued unanswered (aiohttp: 32), each body buffered up to
        # 2 x read_bufsize before reading pauses: bounds a connection's memory
        with contextlib.suppress(TypeError):  # another aiohttp: its own queue
            self._parser = HttpRequestParser(
                self, self._loop, self._read_bufsize, payload_exception=RequestPayloadError,
                auto_decompress=kwargs.get("auto_decompress", True), max_msg_queue_size=PIPELINED,
                **self._parser_options)
            self._max_msg_queue_size, self._msg_queue_resume_size = PIPELINED, PIPELINED // 2
        #: the bytes received so far, while fewer than SALVAGE_BYTES; None after
        self._seen: bytearray | None = bytearray()
        #: an unparsable request was queued: the rest of the connection's bytes are dropped
        self._broken = False
        #: closes the connection when a response write stalls (the client reads nothing)
        self._stalled: asyncio.TimerHandle | None = None
        #: loop time of the last bytes received (or of the connection): --max-connections evicts the idlest
        self.active = self._loop.time()

    def no_lingering(self) -> None:
        """Close right after the answer, without reading the rest of the body away."""
        self._lingering_time = 0.0

    def pause_writing(self) -> None:
        """The client stopped reading (its answers pile up): it has the write timeout
        (--read-timeout) to read again, else the connection is dropped and counted. This also
        bounds a client pipelining requests it never reads the answers of (aiohttp queues at
        most MAX_MSG_QUEUE_SIZE requests a connection and stops reading beyond)."""
        super().pause_writing()
        if self._stalled is None and self._keepalive_timeout:
            self._stalled = self._loop.call_later(self._keepalive_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _write_stalled(self) -> None:
        self._stalled = None
        server = self._manager
        if isinstance(server, _Server) and server.app is not None:
            server.app[METRICS].reject(Reason.TIMEOUT)
            server.app[REFUSALS].add(time.monotonic(), Reason.TIMEOUT.value, self._peer(),
                                     f"answers not read within {self._keepalive_timeout:g} s: connection closed")
        if self.transport is not None:
            self.transport.abort()  # the unsent answers are dropped; connection_lost cleans up

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().connection_lost(exc)

    def _peer(self) -> str:
        with contextlib.suppress(Exception):
            return str(self.transport.get_extra_info("peername")[0]) if self.transport else "unknown"
        return "unknown"

    def data_received(self, data: bytes) -> None:
        """aiohttp's parser drops every request of a segment when one in it is unparsable:
        parse the connection's bytes again piece by piece and queue the requests before it.
        After an unparsable request nothing more is read: the connection ends with its 400, and
        aiohttp's parser would queue one more error (holding the data) for every further read."""
        self.active = self._loop.time()
        if self._broken:
            return
        seen = self._seen
        if seen is not None:
            if len(seen) + len(data) > SALVAGE_BYTES:
                seen = self._seen = None
            else:
                seen += data
        before = self._request_count
        super().data_received(data)
        if self._messages and isinstance(self._messages[-1][0], _ErrInfo):
            self._broken = True
        if seen is None or self._request_count != before + 1 or not self._messages:
            return
        if not isinstance(self._messages[-1][0], _ErrInfo):
            return
        self._seen = None  # the connection ends with this error: no second salvage
        salvaged = self._parse_again(bytes(seen), before)
        if salvaged:
            error = self._messages.pop()
            self._messages.extend(salvaged)
            self._messages.append(error)
            self._request_count += len(salvaged)

    def _parse_again(self, data: bytes, skip: int) -> list[Any]:
        """The complete requests in `data` after the first `skip`, up to the unparsable one."""
        try:
            parser = HttpRequestParser(self, self._loop, self._read_bufsize, payload_exception=RequestPayloadError,
                                       max_msg_queue_size=PIPELINED, **self._parser_options)
        except TypeError:  # another aiohttp: no salvage
            return []
        messages: list[Any] = []
        for piece in data.splitlines(keepends=True):
            try:
                parsed, upgraded, _ = parser.feed_data(piece)
            except HttpProcessingError:
                break
            messages.extend(parsed)
            if upgraded:
                break
        complete = [(m, p) for m, p in messages[skip:] if p.is_eof()]
        return complete if len(complete) == len(messages[skip:]) else complete[:-1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        if isinstance(server, _Server) and not server.admit():
            transport.write(_TOO_MANY_CONNECTIONS)  # type: ignore[attr-defined]
            transport.close()
            self._manager = None  # never registered: connection_lost has nothing to undo
            return
        # a small kernel send buffer: a client that reads nothing stalls our writes (and is
        # dropped, see pause_writing) after ~SEND_BUFFER_BYTES of answers, not megabytes
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        super().connection_made(transport)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """HTTP aiohttp cannot parse (or a failure outside our handler): the project's JSON body,
        counted, the request line never echoed; aiohttp's own text answer otherwise."""
        plain = super().handle_error(request, status, exc, message)  # logs (masked, see _ClientFaults)
        server = self._manager
        app = server.app if isinstance(server, _Server) else None
        if app is None:
            return plain
        reason = Reason.MALFORMED if 400 <= status < 500 else Reason.INTERNAL
        app[METRICS].reject(reason)
        text = ("request is not valid HTTP/1.1 (request line, headers or chunked framing)" if reason is Reason.MALFORMED
                else _INTERNAL_MESSAGE)
        app[REFUSALS].add(time.monotonic(), reason.value, self._peer(), text)
        response = _error(status if reason is Reason.MALFORMED else 400, reason, text)
        response.force_close()
        return response


class _Server(web.Server):
    """aiohttp's server (protocol factory) with a bound on open connections."""

    app: web.Application | None = None
    max_connections = 0

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def admit(self) -> bool:
        """Room for one more connection: below the limit, or after closing the connection
        idle longest (a keep-alive one waiting for its next request)."""
        if not self.max_connections or len(self._connections) < self.max_connections:
            return True
        idle = [handler for handler in self._connections  # one already closing frees nothing more
                if getattr(handler, "_waiter", None) is not None and getattr(handler, "_current_request", 1) is None
                and not getattr(handler, "_force_close", True)]
        if idle:  # the one that received nothing for longest, not the oldest
            handler = min(idle, key=lambda h: getattr(h, "active", 0.0))
            handler.close()
            handler.force_close()
            return True
        if self.app is not None:
            self.app[METRICS].reject(Reason.TOO_MANY_CONNECTIONS)
        return False


def _json_http_errors(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
                      ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """`handler` with the 4xx aiohttp raises itself (before or around the app's routes) answered
    with the project's JSON and counted: a path the router cannot match at all (CONNECT
    host:443, OPTIONS *), an Expect other than 100-continue (417, the header never echoed)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as error:
            if not 400 <= error.status < 500 or not isinstance(request, web.Request):
                raise
            reason, message = _HTTP_ERRORS.get(error.status, (Reason.MALFORMED, "request refused"))
            response = _refuse(request, error.status, reason, message)
            for name in ("Allow", "Retry-After"):
                if name in error.headers:
                    response.headers[name] = error.headers[name]
            return response

    return handle


_HTTP_ERRORS = {
    404: (Reason.NOT_FOUND, "no such path: notifications go to POST /notify or /notify/<token>"),
    405: (Reason.METHOD_NOT_ALLOWED, "method not allowed here"),
    417: (Reason.MALFORMED, "unsupported Expect header: only 100-continue is understood"),
}


class Runner(web.AppRunner):
    """The AppRunner of the exporter's apps: --max-connections and JSON for protocol errors."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state, our protocol factory
        assert isinstance(server, _Server)
        server.app = self.app
        server.request_handler = _json_http_errors(server.request_handler)
        if SETTINGS in self.app:
            server.max_connections = max_connections(self.app[SETTINGS])
        asyncio.get_running_loop().set_exception_handler(_loop_errors)
        return server


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one where allowed; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def max_connections(settings: Settings) -> int:
    """--max-connections, or by default the fd limit less FD_RESERVE, at most DEFAULT_MAX_CONNECTIONS."""
    if settings.max_connections is not None:
        return settings.max_connections
    return max(16, min(DEFAULT_MAX_CONNECTIONS, raise_fd_limit() - FD_RESERVE))


_ACCEPT_ERRORS = RateLimitedLog(log)


def _loop_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio logs a traceback for every accept retry at the fd limit: one line per interval instead."""
    error = context.get("exception")
    if isinstance(error, OSError) and "accept" in str(context.get("message", "")):
        _ACCEPT_ERRORS.error(time.monotonic(), "cannot accept connections", error=str(error),
                             hint="open-file limit reached: lower --max-connections or raise `ulimit -n`")
        return
    loop.default_exception_handler(context)


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
        state.acquire()  # filelock.Busy (an OSError): "cannot start: --state-file ... is in use by another exporter"
        app[METRICS].record_facts(state.load())
        if state.set_aside is not None:
            app[METRICS].state_set_aside.labels(reason=state.set_aside.value).inc()

    async def loop() -> None:
        running = asyncio.get_running_loop()
        next_save = running.time() + (interval or 0)
        trim, next_trim = _malloc_trim(), running.time() + TRIM_SECONDS
        while True:
            await asyncio.sleep(TICK_SECONDS)
            app[REFUSALS].flush(time.monotonic())
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
    if shared is not None:  # answered notifications still queued for the backend
        await shared.flush()
    app[REFUSALS].flush(time.monotonic(), force=True)
    if RECORDER in app:
        app[RECORDER].close()
    if state is not None:
        state.save()  # newer than any periodic write still running: that one is skipped
        state.release()
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
    time (aiohttp arms it at connect), which bounds slow-header clients; it is also how long
    a response write may stall on a client that does not read (see `_Handler`).
    """
    return {
        "access_log_class": AccessLogger,
        "keepalive_timeout": settings.read_timeout,
        "shutdown_timeout": settings.read_timeout,
        # the rest of a body left unread is read away after the answer at most this long
        # (aiohttp: 10 s); a refusal that closes the connection reads none (see _refuse)
        "lingering_time": min(settings.read_timeout, 2.0),
        "max_line_size": MAX_LINE_BYTES,
        "max_field_size": MAX_LINE_BYTES,
        "max_headers": MAX_HEADERS,
    }


def _add_health(app: web.Application) -> None:
    app.router.add_get("/-/healthy", handle_healthy)
    app.router.add_get("/-/ready", handle_ready)
    app.router.add_post("/-/reload", handle_reload)
    app.router.add_get("/", handle_index)


def _add_fallbacks(app: web.Application) -> None:
    """JSON 405 for another method on every path, JSON 404 for any other path; both counted."""
    allowed: dict[str, set[str]] = {}
    for route in app.router.routes():
        allowed.setdefault(route.resource.canonical, set()).add(route.method)  # type: ignore[union-attr]
    for path, methods in allowed.items():
        app.router.add_route(hdrs.METH_ANY, path, _wrong_method(sorted(methods)))
    app.router.add_route(hdrs.METH_ANY, "/{path:.*}", handle_not_found)


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
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[guard] if settings.allow_cidr else [])
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
        shared.deliver = _deliver(metrics)
        metrics.track_backend(shared.stats)
    app[SETTINGS], app[METRICS], app[CORRELATOR], app[CLOCK] = settings, metrics, correlator, clock
    app[TIMER] = ProcessClock(clock, monotonic)
    app[SHARED] = shared
    app[READY] = asyncio.Event()
    app[LAST_RELOAD] = [float("-inf")]  # monotonic time of the last POST /-/reload
    app[GATE] = Gate(settings.max_concurrent_requests, max(settings.max_buffered_bytes, settings.max_body_bytes))
    if settings.state_path is not None:
        app[STATE] = StateFile(settings.state_path, correlator, app[TIMER], settings.state_max_age)
        metrics.track_state_file()
    if settings.record_path is not None:
        app[RECORDER] = Recorder(settings.record_path, settings.record_max_bytes, settings.record_keep)
    app[REFUSALS], app[BUGS] = RefusalLog(log), RateLimitedLog(log)
    if settings.token is not None:
        _CLIENT_FAULTS.secrets.add(settings.token.get_secret_value())
    for path in ("/notify", "/notify/", "/notify/{token}", "/notify/{token}/"):  # MTT's URL as typed
        app.router.add_post(path, handle_notify)
    if settings.metrics_listen is None:
        app.router.add_get("/metrics", handle_metrics)
    _add_health(app)
    _add_fallbacks(app)
    app.cleanup_ctx.append(_lifecycle)
    return app


def create_metrics_app(main: web.Application) -> web.Application:
    """The internal listener of --metrics-listen: /metrics and health of `main`."""
    app = web.Application()
    for key in (SETTINGS, METRICS, CORRELATOR, CLOCK, READY, SHARED, REFUSALS):
        app[key] = main[key]
    app.router.add_get("/metrics", handle_metrics)
    _add_health(app)
    _add_fallbacks(app)
    return app
