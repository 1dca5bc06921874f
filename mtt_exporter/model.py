"""MTT notification payload: pydantic validation plus the seed's quirks, into one Notification."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgspec
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .cause import CAUSE_MAX

MOSCOW = ZoneInfo("Europe/Moscow")
#: date_time above this is taken as milliseconds (third-party emulators send those).
MILLISECONDS_ABOVE = 10**12
#: Longest call id and number kept in memory; MTT's ids are 32 hex digits.
MAX_ID_LENGTH = 64
#: Longest extension used (for the label map's sip_id/extension keys); longer ones are ignored.
MAX_EXTENSION_LENGTH = 16
#: Longest string any field may have as sent (spaces included), checked before it is looked at.
MAX_FIELD_LENGTH = 256
#: Earliest plausible event time, 2000-01-01T00:00:00Z: MTT's notifications are younger.
EARLIEST_EVENT_TIME = 946_684_800.0
#: Latest plausible event time without a receipt time, 2100-01-01T00:00:00Z.
LATEST_EVENT_TIME = 4_102_444_800.0
#: How far past its receipt an event may be dated: clock skew and zone mistakes are hours; a week
#: leaves room for `simulate`, whose event clock runs --speed times faster than the wall clock.
MAX_FUTURE_SECONDS = 7 * 86_400.0


class EventType(StrEnum):
    """Notification type; the value is the metric label, `code` the wire code."""

    ORIGINATE = "originate"
    ANSWER = "answer"
    HANGUP = "hangup"
    PREMEDIA_START = "premedia_start"
    PREMEDIA_END = "premedia_end"
    TALK = "talk"

    @property
    def code(self) -> str:
        return _CODE_BY_EVENT[self]


EVENT_BY_CODE: dict[str, EventType] = {
    "o": EventType.ORIGINATE,
    "s": EventType.ANSWER,
    "h": EventType.HANGUP,
    "sp": EventType.PREMEDIA_START,
    "ep": EventType.PREMEDIA_END,
    "t": EventType.TALK,
}
_CODE_BY_EVENT = {event: code for code, event in EVENT_BY_CODE.items()}


class Side(StrEnum):
    """Side an event refers to: A is the caller, B the forwarding number."""

    A = "A"
    B = "B"
    UNKNOWN = "unknown"


class Reason(StrEnum):
    """Why a request or a notification was refused: the `reason` label, a closed set."""

    MALFORMED = "malformed"
    INVALID = "invalid"
    UNKNOWN_EVENT = "unknown_event"
    TOO_LARGE = "too_large"
    TOO_MANY_ITEMS = "too_many_items"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    #: An event time before 2000, a day or more past its receipt, or a duration past the call TTL.
    IMPLAUSIBLE_TIME = "implausible_time"
    #: MTT's JSON-RPC routing request (getControlCallFollowMe) posted to the notification URL.
    ROUTING_REQUEST = "routing_request"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    #: More open connections than --max-connections: closed at once with a 429.
    TOO_MANY_CONNECTIONS = "too_many_connections"
    #: A bug of the exporter met while applying a notification; nothing of it was kept.
    INTERNAL = "internal"


class Conflict(StrEnum):
    """A field given twice (in `event` and in `data`/top level) with different values."""

    TYPE = "type"
    CAUSE = "cause"
    NUMBER = "number"


class PayloadError(ValueError):
    """A notification that cannot be used, with the reason it is counted under."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Notification(NamedTuple):
    """One validated notification, normalised; what the correlator consumes. Immutable (a
    NamedTuple: built in a third of a frozen dataclass's time, once per notification)."""

    conf_id: str
    event: EventType
    #: Unix seconds of the event (Moscow time of `data`, else `date_time`).
    time: float
    side: Side = Side.UNKNOWN
    #: Leg key: the redirect (forwarding) number, normalised; "" when absent.
    redirect_number: str = ""
    #: None when absent or not an integer 0..127.
    cause: int | None = None
    number_a: str = ""
    sip_id: str = ""
    conflicts: tuple[Conflict, ...] = ()
    #: extension of sip_id, stripped; "" when absent or longer than MAX_EXTENSION_LENGTH
    extension: str = ""


# --- raw payload -------------------------------------------------------------------------

_Scalar = str | int | float | None


def strip_keys(mapping: dict[Any, Any]) -> dict[Any, Any]:
    """The same mapping with stray whitespace cut from its string keys ("client_id ")."""
    return {k.strip() if isinstance(k, str) else k: v for k, v in mapping.items()}


class RawEvent(BaseModel):
    """The `event` object as sent."""

    model_config = ConfigDict(extra="ignore")

    type: str | None = None
    side: str | None = None
    cause: _Scalar = None


class RawNotification(BaseModel):
    """The notification object as sent; every field optional, combined in `parse`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    date_time: int | float | str | None = None
    data: str | None = None
    event: RawEvent | None = None
    cause: _Scalar = None
    redirect_number: _Scalar = None
    sip_id: _Scalar = None
    numberA: _Scalar = None
    h323_conf_id: _Scalar = None
    client_id: _Scalar = None
    extension: _Scalar = None

    @field_validator("event", mode="before")
    @classmethod
    def _event_keys(cls, value: Any) -> Any:
        # keys inside `event` may carry stray whitespace too
        if isinstance(value, dict):
            return strip_keys(value)
        if isinstance(value, str):  # documented as an object, seen as the bare type code
            return {"type": value}
        return value


class _Event(NamedTuple):
    type: str | None
    side: str | None
    cause: _Scalar


class _Fields(NamedTuple):
    """What RawNotification.model_validate gives, for payloads whose fields have plain JSON types."""

    date_time: int | float | str | None
    data: str | None
    event: _Event | None
    cause: _Scalar
    redirect_number: _Scalar
    sip_id: _Scalar
    numberA: _Scalar
    h323_conf_id: _Scalar
    extension: _Scalar


class WireEvent(msgspec.Struct, forbid_unknown_fields=True):
    """The `event` object as MTT sends it, decoded straight from the body (see `decode_wire`)."""

    type: str | None = None
    side: str | None = None
    cause: _Scalar = None


class Wire(msgspec.Struct, forbid_unknown_fields=True):
    """A notification as MTT sends it: its known fields, each of a plain JSON type. What
    `_plain_fields` accepts, decoded from the body in one step (msgspec) instead of a dict."""

    date_time: int | float | str | None = None
    data: str | None = None
    event: WireEvent | None = None
    cause: _Scalar = None
    redirect_number: _Scalar = None
    sip_id: _Scalar = None
    numberA: _Scalar = None
    h323_conf_id: _Scalar = None
    client_id: _Scalar = None
    #: MTT's own quirk (the seed's hangups): "client_id " with a space; not read, only type-checked
    client_id_spaced: _Scalar = msgspec.field(default=None, name="client_id ")
    extension: _Scalar = None


_WIRE = msgspec.json.Decoder(list[Wire] | Wire)


def decode_wire(body: bytes) -> list[Wire] | Wire | None:
    """The body as notifications of the usual shape, or None for anything else (another key,
    a key with stray whitespace, a non-plain type, a BOM, JSON that json.loads reads differently):
    then it is decoded as JSON and validated the general way, with the same result."""
    try:
        return _WIRE.decode(body)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None


_SCALAR_TYPES = (str, int, float)
_SCALAR_FIELDS = ("date_time", "cause", "redirect_number", "sip_id", "numberA", "h323_conf_id", "client_id", "extension")


def _plain_fields(cleaned: dict[Any, Any]) -> _Fields | None:
    """The fast path of validation: the same values as the pydantic model when every field has
    the exact type the model keeps unchanged; None to let the model validate (and explain) the rest."""
    get = cleaned.get
    for name in _SCALAR_FIELDS:
        value = get(name)
        if value is not None and type(value) not in _SCALAR_TYPES:
            return None
    data = get("data")
    if data is not None and type(data) is not str:
        return None
    event = get("event")
    if type(event) is str:  # documented as an object, seen as the bare type code
        event = {"type": event}
    if event is not None:
        if type(event) is not dict:
            return None
        fields = strip_keys(event)
        kind, side, cause = fields.get("type"), fields.get("side"), fields.get("cause")
        if (kind is not None and type(kind) is not str) or (side is not None and type(side) is not str) or (
            cause is not None and type(cause) not in _SCALAR_TYPES
        ):
            return None
        event = _Event(kind, side, cause)
    return _Fields(get("date_time"), data, event, get("cause"), get("redirect_number"), get("sip_id"),
                   get("numberA"), get("h323_conf_id"), get("extension"))


_DATA = re.compile(
    r"^\s*event=(?P<code>[A-Za-z]*)_(?P<number>[^_&]*)_"
    r"(?P<ts>\d{4}-\d{1,2}-\d{1,2}-\d{1,2}-\d{1,2}-\d{1,2})"
    r"(?P<rest>(?:&[^&]*)*)\s*$"
)
_NON_DIGITS = re.compile(r"[\s\-()]")


#: Since 1992 every change of Moscow's UTC offset fell on a whole hour of local time.
_WHOLE_HOUR_CHANGES_SINCE = 1992


def moscow_to_unix(stamp: str) -> float:
    """`YYYY-MM-DD-HH-MM-SS` Moscow wall-clock time -> Unix seconds."""
    y, mo, d, h, mi, s = (int(part) for part in stamp.split("-"))
    if y < _WHOLE_HOUR_CHANGES_SINCE or not (0 <= mi <= 59 and 0 <= s <= 59):
        return datetime(y, mo, d, h, mi, s, tzinfo=MOSCOW).timestamp()
    return _moscow_hour(y, mo, d, h) + mi * 60 + s


@lru_cache(maxsize=4096)
def _moscow_hour(y: int, mo: int, d: int, h: int) -> float:
    # the offset is constant within an hour: one zoneinfo look-up per hour, not per second
    return datetime(y, mo, d, h, tzinfo=MOSCOW).timestamp()


def _json_type(value: object) -> str:
    """How a JSON value is called in messages to the sender."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def bounded_text(value: object, name: str, limit: int = MAX_FIELD_LENGTH) -> str:
    """A sender's string or number as text that is at most `limit` characters long and
    printable (whitespace apart), so it is safe to keep, log, hash and expose; else PayloadError.

    Every string taken from a body goes through here before anything is done with it: a lone
    surrogate (JSON "\ud800") or a control character never reaches state, an exemplar, a
    dedup key or a log line, and no field is larger than `limit` in memory.
    """
    if type(value) is str and len(value) <= limit and value.isprintable():
        return value  # the usual case, in one test
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        text = str(value)  # an int may come where a string is documented
    else:
        raise PayloadError(Reason.INVALID, f"{name}: expected a string or a number, got {_json_type(value)}")
    if len(text) > limit:
        raise PayloadError(Reason.INVALID, f"{name}: longer than {limit} characters")
    if not text.isprintable() and not "".join(text.split()).isprintable():
        raise PayloadError(
            Reason.INVALID, f"{name}: contains a control, unassigned or invalid (lone surrogate) character")
    return text


def _kept(text: str, name: str) -> str:
    """A normalised id or number that is kept: at most MAX_ID_LENGTH printable characters."""
    if len(text) > MAX_ID_LENGTH:
        raise PayloadError(Reason.INVALID, f"{name}: longer than {MAX_ID_LENGTH} characters")
    if not text.isprintable():  # normalisation removed whitespace; anything else was checked
        raise PayloadError(Reason.INVALID, f"{name}: contains a non-printable character")
    return text


def normalise_conf_id(value: object) -> str:
    """Call key: h323_conf_id without any whitespace, upper-case."""
    return "".join(str(value).split()).upper()


def normalise_number(value: object) -> str:
    """Russian numbers in +7/8/7 + 10 digits or bare 10 digits -> 7 + 10 digits."""
    raw = str(value)
    if not raw.isdigit():  # digits only (the usual case): nothing to remove
        raw = _NON_DIGITS.sub("", raw)
    digits = raw[1:] if raw.startswith("+") else raw
    if digits.isdigit():
        if len(digits) == 11 and digits[0] in "78":
            return "7" + digits[1:]
        if len(digits) == 10:
            return "7" + digits
    return raw


def parse_cause(value: object) -> int | None:
    """An integer 0..127, else None (labelled "unknown")."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    try:
        cause = int(str(value).strip())
    except ValueError:
        return None
    return cause if 0 <= cause <= CAUSE_MAX else None


def _present(value: object) -> bool:
    return value is not None and str(value).strip() != ""


def _event_time(date_time: object) -> float | None:
    """date_time as Unix seconds: a number or numeric string of seconds (milliseconds above
    MILLISECONDS_ABOVE), or ISO 8601 (Moscow time when it names no offset); None if none of these."""
    if date_time is None or isinstance(date_time, bool):
        return None
    text = bounded_text(date_time, "date_time").strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            return None
        try:
            return (stamp if stamp.tzinfo else stamp.replace(tzinfo=MOSCOW)).timestamp()
        except (OverflowError, ValueError):  # year 1 with a positive offset
            return -1.0
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return seconds / 1000 if seconds > MILLISECONDS_ABOVE else seconds


def check_time(time: float, now: float | None, name: str = "event time") -> None:
    """Refuse (implausible_time) an event time before 2000, or over a week past its receipt `now`."""
    latest = LATEST_EVENT_TIME if now is None else min(LATEST_EVENT_TIME, now + MAX_FUTURE_SECONDS)
    if not EARLIEST_EVENT_TIME <= time <= latest:
        when = "before 2000-01-01" if time < EARLIEST_EVENT_TIME else (
            "after 2100-01-01" if now is None or time > LATEST_EVENT_TIME
            else f"more than {MAX_FUTURE_SECONDS:g} s after its receipt")
        raise PayloadError(Reason.IMPLAUSIBLE_TIME, f"{name}: {when}; refused so it cannot distort delays and durations")


def _parse_side(value: object) -> Side:
    if value is None:
        return Side.UNKNOWN
    text = str(value).strip().upper()
    return Side(text) if text in ("A", "B") else Side.UNKNOWN


#: What each field should have been, for messages to the sender.
_EXPECTED = {
    "data": "a string 'event=<type>_<number>_<YYYY-MM-DD-HH-MM-SS>[&cause=<n>]'",
    "event": "an object like {\"type\": \"h\", \"side\": \"B\", \"cause\": 16}",
    "date_time": "Unix seconds or milliseconds (a number or numeric string), or ISO 8601",
}


def _validation_message(error: ValidationError) -> str:
    """One sentence per wrong field, in the sender's terms (not pydantic's)."""
    seen: dict[str, str] = {}
    for e in error.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith(("function-", "is-instance"))]
        # a union reports each member; the field name is the first element of the location
        name = ".".join(loc[:2]) if loc and loc[0] == "event" and len(loc) > 1 and loc[1] in ("type", "side", "cause") else (loc[0] if loc else "body")
        if name not in seen:
            expected = _EXPECTED.get(name, "a string" if name in ("event.type", "event.side") else "a string or a number")
            seen[name] = f"{name}: expected {expected}, got {_json_type(e.get('input'))}"
    return "; ".join(seen.values())


#: The methods of MTT's routing API (JSON-RPC), sometimes pointed at the notification URL.
_ROUTING_METHODS = frozenset({"getcontrolcallfollowme"})


def routing_request(item: dict[Any, Any]) -> bool:
    """Whether a JSON object is a JSON-RPC request (MTT's getControlCallFollowMe), not a notification."""
    method = item.get("method")
    return "jsonrpc" in item or (isinstance(method, str) and method.strip().lower() in _ROUTING_METHODS)


def parse(item: object, now: float | None = None) -> Notification:
    """Validate one decoded JSON value (or a `Wire`) received at `now`; raise PayloadError with a reason when unusable.

    Every string kept in the Notification went through `bounded_text`: bounded and printable.
    """
    raw: Wire | _Fields | RawNotification | None
    if type(item) is Wire:
        usual = _parse_usual(item, now)
        if usual is not None:
            return usual
        raw = item  # decoded from the body with the types `_plain_fields` checks, and no other key
        cleaned: dict[Any, Any] = {}  # hence no JSON-RPC keys either
    elif not isinstance(item, dict):
        raise PayloadError(Reason.MALFORMED, f"expected a JSON object (one notification), got {_json_type(item)}")
    else:
        # keys may carry stray whitespace: "client_id "
        cleaned = strip_keys(item)
        raw = _plain_fields(cleaned)
        if raw is None:
            if routing_request(cleaned):
                raise PayloadError(Reason.ROUTING_REQUEST, ROUTING_MESSAGE)
            try:
                raw = RawNotification.model_validate(cleaned)
            except ValidationError as error:
                raise PayloadError(Reason.INVALID, _validation_message(error)) from None

    conflicts: list[Conflict] = []
    data_code = data_number = data_cause = None
    data_time: float | None = None
    if _present(raw.data):
        match = _DATA.match(bounded_text(raw.data, "data"))
        if match is None:
            raise PayloadError(
                Reason.INVALID,
                "data: expected 'event=<type>_<number>_<YYYY-MM-DD-HH-MM-SS>[&cause=<n>]'",
            )
        data_code = match["code"].lower() or None
        data_number = match["number"] or None
        try:
            data_time = moscow_to_unix(match["ts"])
        except ValueError:
            raise PayloadError(Reason.INVALID, f"data: no such date {match['ts']!r}") from None
        except OverflowError:
            data_time = -1.0  # year 1: refused as implausible below
        for param in match["rest"].split("&"):
            key, _, value = param.partition("=")
            if key.strip() == "cause":
                data_cause = value

    event_type = bounded_text(raw.event.type, "event.type") if raw.event and raw.event.type is not None else None
    event_code = event_type.strip().lower() if event_type and event_type.strip() else None
    code = event_code or data_code
    if code is None:
        if routing_request(cleaned):
            raise PayloadError(Reason.ROUTING_REQUEST, ROUTING_MESSAGE)
        raise PayloadError(Reason.INVALID, "no event type: expected event.type (or data 'event=<type>_...'), one of o, s, h, sp, ep, t")
    event = EVENT_BY_CODE.get(code)
    if event is None:
        raise PayloadError(Reason.UNKNOWN_EVENT, f"unknown event type {ascii(code[:16])}: expected one of o, s, h, sp, ep, t")
    if event_code and data_code and event_code != data_code:
        conflicts.append(Conflict.TYPE)

    if not _present(raw.h323_conf_id):
        raise PayloadError(Reason.INVALID, "h323_conf_id: missing; expected the call id MTT sends with every notification")
    conf_id = _kept(normalise_conf_id(bounded_text(raw.h323_conf_id, "h323_conf_id")), "h323_conf_id")

    time = data_time if data_time is not None else _event_time(raw.date_time)
    if time is None:
        raise PayloadError(Reason.INVALID, f"no event time: expected data with a time, or date_time as {_EXPECTED['date_time']}")
    check_time(time, now)

    # cause: event.cause wins, then top-level cause, then data's &cause=
    given = [
        c for c in (raw.event.cause if raw.event else None, raw.cause, data_cause) if _present(c)
    ]
    cause = parse_cause(given[0]) if given else None
    if len(given) > 1 and len({parse_cause(c) for c in given}) > 1:
        conflicts.append(Conflict.CAUSE)

    side = _parse_side(bounded_text(raw.event.side, "event.side") if raw.event and raw.event.side is not None else None)
    number_a = _number(raw.numberA, "numberA")
    redirect = _number(raw.redirect_number, "redirect_number")
    # data carries numberA for side-A premedia and the redirect number otherwise
    premedia_a = side is Side.A and event in (EventType.PREMEDIA_START, EventType.PREMEDIA_END)
    if data_number:
        data_number = _number(data_number, "data's number")
        if premedia_a:
            if number_a and data_number != number_a:
                conflicts.append(Conflict.NUMBER)
            number_a = number_a or data_number
        elif redirect and data_number != redirect:
            conflicts.append(Conflict.NUMBER)
        else:
            redirect = redirect or data_number

    extension = _extension(raw.extension)
    return Notification(
        conf_id=conf_id,
        event=event,
        time=time,
        side=side,
        redirect_number=redirect,
        cause=cause,
        number_a=number_a,
        sip_id=_number(raw.sip_id, "sip_id"),
        conflicts=tuple(conflicts),
        extension=extension,
    )


#: `data` as MTT writes it: a known type code, a 10-11 digit number (+ allowed), a zero-padded
#: time, at most a cause; ASCII only, so every field it yields is printable and short.
_USUAL_DATA = re.compile(
    r"event=(o|s|h|sp|ep|t)_(\+?[0-9]{10,11})_([0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{2})-([0-9]{2})-([0-9]{2})"
    r"(?:&cause=([0-9]{1,3}))?"
)
_USUAL_SIDE = {None: Side.UNKNOWN, "A": Side.A, "B": Side.B}


@lru_cache(maxsize=4096)
def _moscow_hour_of(hour: str) -> float:
    """`YYYY-MM-DD-HH` Moscow time -> Unix seconds; ValueError for no such date."""
    return _moscow_hour(int(hour[:4]), int(hour[5:7]), int(hour[8:10]), int(hour[11:13]))


def _parse_usual(raw: Wire, now: float | None) -> Notification | None:
    """`parse` of a notification as MTT usually sends it (see `_USUAL_DATA`; a known event.type
    code as sent, side A, B or none, call id of ASCII printable characters), else None: then the
    general path decides. Same Notification, or the same PayloadError, as the general path
    (tests/test_model.py proves it for random notifications); bounds and printability hold as
    the patterns only admit short ASCII printable text."""
    data, event, conf = raw.data, raw.event, raw.h323_conf_id
    if type(data) is not str or not data.isascii() or type(conf) is not str or not (
            len(conf) <= MAX_ID_LENGTH and conf.isascii() and conf.isprintable()):
        return None
    match = _USUAL_DATA.fullmatch(data)
    if match is None:
        return None
    data_code, data_number, hour, minute, second, data_cause = match.groups()
    kind = event.type if event is not None else None
    if kind is None:
        event_code = None
        kind = data_code
    elif kind in EVENT_BY_CODE:
        event_code = kind
    else:
        return None
    side = _USUAL_SIDE.get(event.side if event is not None else None)
    conf_id = "".join(conf.split()).upper()
    if side is None or not conf_id or int(hour[:4]) < _WHOLE_HOUR_CHANGES_SINCE or minute > "59" or second > "59":
        return None
    try:
        time = _moscow_hour_of(hour) + int(minute) * 60 + int(second)
    except (ValueError, OverflowError):
        return None
    if not EARLIEST_EVENT_TIME <= time <= (LATEST_EVENT_TIME if now is None else min(LATEST_EVENT_TIME, now + MAX_FUTURE_SECONDS)):
        return None
    event_type = EVENT_BY_CODE[kind]
    conflicts = [Conflict.TYPE] if event_code is not None and event_code != data_code else []

    event_cause = event.cause if event is not None else None
    if event_cause is None and raw.cause is None and data_cause is None:
        cause = None
    else:
        given = [c for c in (event_cause, raw.cause, data_cause) if _present(c)]
        cause = parse_cause(given[0]) if given else None
        if len(given) > 1 and len({parse_cause(c) for c in given}) > 1:
            conflicts.append(Conflict.CAUSE)

    number_a = _usual_number(raw.numberA) or _number(raw.numberA, "numberA")
    redirect = _usual_number(raw.redirect_number) or _number(raw.redirect_number, "redirect_number")
    data_number = _usual_number(data_number)
    if side is Side.A and event_type in _PREMEDIA:
        if number_a and data_number != number_a:
            conflicts.append(Conflict.NUMBER)
        number_a = number_a or data_number
    elif redirect and data_number != redirect:
        conflicts.append(Conflict.NUMBER)
    else:
        redirect = redirect or data_number
    extension = raw.extension
    if not (type(extension) is str and len(extension) <= MAX_EXTENSION_LENGTH and extension.isascii()
            and extension.isalnum()):  # else stripped or dropped as `_extension` does
        extension = _extension(extension)
    return Notification(conf_id, event_type, time, side, redirect, cause, number_a,
                        _usual_number(raw.sip_id) or _number(raw.sip_id, "sip_id"), tuple(conflicts), extension)


def _usual_number(value: object) -> str:
    """`_number` of an absent number or of 1-64 ASCII digits with an optional "+"; "" for the rest."""
    if value is None or type(value) is not str or len(value) > MAX_ID_LENGTH or not value.isascii():
        return ""
    digits = value[1:] if value[:1] == "+" else value
    if not digits.isdigit():
        return ""
    if len(digits) == 11 and digits[0] in "78":
        return "7" + digits[1:]
    return "7" + digits if len(digits) == 10 else value


_PREMEDIA = (EventType.PREMEDIA_START, EventType.PREMEDIA_END)


ROUTING_MESSAGE = (
    "this is MTT's routing request (JSON-RPC getControlCallFollowMe), not a call notification: "
    "point the routing URL at your routing service and only event_URL here"
)


def _number(value: object, name: str) -> str:
    """A phone number field, normalised, bounded and printable; "" when absent."""
    if type(value) is str and len(value) <= MAX_ID_LENGTH and value.isdigit():
        return normalise_number(value)  # the usual case: digits are printable, and stay as long
    if not _present(value):
        return ""
    return _kept(normalise_number(bounded_text(value, name)), name)


def _extension(value: object) -> str:
    """The extension of sip_id, stripped, for the label map's sip_id/extension keys; "" when absent
    or unusable (too long, not printable): it only refines a label, so it never refuses a notification."""
    if not _present(value):
        return ""
    try:
        text = bounded_text(value, "extension").strip()
    except PayloadError:
        return ""
    return text if len(text) <= MAX_EXTENSION_LENGTH and text.isprintable() else ""


def mask_number(number: str) -> str:
    """For logs: keep the first 4 and last 2 digits, e.g. 7968*****33."""
    if len(number) <= 6:
        return "*" * len(number)
    return number[:4] + "*" * (len(number) - 6) + number[-2:]
