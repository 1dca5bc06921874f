"""The hot path's shortcuts give exactly what the general code gives."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mtt_exporter import model
from mtt_exporter.model import MOSCOW, PayloadError, decode_wire, moscow_to_unix, parse

KEYS = ["date_time", "data", "event", "cause", "redirect_number", "sip_id", "numberA", "h323_conf_id", "client_id",
        "extension", "other"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.sampled_from(["79684881033", "+7 968 488-10-33", "event=h_79684881033_2019-05-23-15-16-59&cause=16",
                                     "BC5F236C 5AD211E9", "h", "A", "16", " 1558613711 "]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(
    st.sampled_from(["type", " type", "side", "cause ", "x"]), st.one_of(SCALARS, st.lists(SCALARS, max_size=1)), max_size=4))
PAYLOADS = st.dictionaries(st.sampled_from(KEYS + [k + " " for k in KEYS]), VALUES, max_size=9)


def outcome(item):
    try:
        return parse(item)
    except PayloadError as error:
        return (error.reason, error.message)


@settings(max_examples=400, deadline=None)
@given(PAYLOADS)
def test_plain_fields_shortcut_equals_pydantic(item):
    fast = outcome(item)
    shortcut = model._plain_fields
    model._plain_fields = lambda cleaned: None  # always the pydantic model
    try:
        slow = outcome(item)
    finally:
        model._plain_fields = shortcut
    assert fast == slow


@settings(max_examples=400, deadline=None)
@given(st.one_of(PAYLOADS, st.lists(PAYLOADS, max_size=3)), st.sampled_from(["json", "bom", "spaced"]))
def test_typed_decoding_equals_json_loads(value, style):
    """A body decoded straight into `Wire`s parses as its json.loads dicts do; other bodies are left to json.loads."""
    body = json.dumps(value, indent=1 if style == "spaced" else None).encode()
    if style == "bom":
        body = "\ufeff".encode() + body
    typed = decode_wire(body)
    if typed is None:
        return
    assert style != "bom"
    items = typed if isinstance(typed, list) else [typed]
    expected = json.loads(body)
    assert [outcome(item) for item in items] == [outcome(item) for item in (expected if isinstance(expected, list) else [expected])]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"h323_conf_id ": "A"}', id="key-with-space"),
        pytest.param(b'{"h323_conf_id": "A", "other": 1}', id="unknown-key"),
        pytest.param(b'{"cause": true}', id="bool"),
        pytest.param(b'{"date_time": 1e400}', id="float-beyond-double"),
        pytest.param(b'{"date_time": NaN}', id="nan-literal"),
        pytest.param(b'{"event": {"type": "o", "extra": 1}}', id="unknown-event-key"),
        pytest.param('\ufeff{"h323_conf_id": "A"}'.encode(), id="bom"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b'{"a": "\\ud800"}', id="lone-surrogate"),
    ],
)
def test_typed_decoding_leaves_the_rest_to_json_loads(body):
    assert decode_wire(body) is None


def test_shortcut_taken_for_the_seed(seed_call):
    for item in seed_call:
        assert model._plain_fields({k.strip(): v for k, v in item.items()}) is not None
        assert isinstance(decode_wire(json.dumps(item).encode()), model.Wire)


@pytest.mark.parametrize("year", [1992, 2010, 2011, 2014, 2019, 2026])
def test_moscow_hour_cache_equals_zoneinfo(year):
    # every hour of the years around Moscow's last offset changes (DST until 2011, +4 to +3 in 2014)
    for day in range(0, 366, 1):
        for hour in range(24):
            try:
                base = datetime.fromordinal(datetime(year, 1, 1).toordinal() + day).replace(hour=hour)
            except ValueError:
                continue
            if base.year != year:
                continue
            for minute, second in ((0, 0), (30, 7), (59, 59)):
                stamp = f"{year}-{base.month:02d}-{base.day:02d}-{hour:02d}-{minute:02d}-{second:02d}"
                expected = datetime(year, base.month, base.day, hour, minute, second, tzinfo=MOSCOW).timestamp()
                assert moscow_to_unix(stamp) == expected, stamp


@pytest.mark.parametrize("stamp", ["2019-02-30-10-00-00", "2019-05-23-24-00-00", "2019-05-23-10-60-00", "2019-05-23-10-00-60"])
def test_moscow_invalid_dates_still_raise(stamp):
    with pytest.raises(ValueError):
        moscow_to_unix(stamp)


# --- the usual-notification path (`model._parse_usual`) --------------------------------------

def _mostly(usual, *others):
    """`usual` 7 times in 8, else one of `others`: enough typical notifications to take the shortcut."""
    other = st.one_of(*others)  # (a nested one_of would be flattened into equal shares)
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda typical: st.just(usual) if typical else other)


_TEXT = st.text(max_size=8)  # any code point, lone surrogates and controls included
_NUMBERS = _mostly("79684881033", st.none(), st.sampled_from(
    ["+79684881033", "89684881033", "9684881033", " 79586488000", "", "+", "7968 488-10-33", "٧٩٦٨٤٨٨١٠٣٣"]),
    st.integers(-1, 10**12), _TEXT)
_CAUSES = _mostly(None, st.integers(-2, 300), st.sampled_from(["16", " 16 ", "n/a", "", "1_6", "016"]),
                  st.floats(allow_nan=True), _TEXT)


@st.composite
def _usual_data(draw):
    """`data` mostly of MTT's shape, with the edges of `_USUAL_DATA` and of the calendar."""
    code = draw(_mostly("h", st.sampled_from(["o", "s", "sp", "ep", "t", "H", "x", ""])))
    number = draw(_mostly("79684881033", st.sampled_from(["+79684881033", "9684881033", "", "+7968488103", "7968488103312"])))
    year = draw(_mostly("2019", st.sampled_from(["2026", "1991", "1999", "2100", "0001", "9999"])))
    edge = st.sampled_from(["00", "01", "12", "13", "23", "24", "29", "30", "31", "59", "60", "99", "3"])
    parts = [draw(_mostly(usual, edge)) for usual in ("05", "23", "15", "16", "59")]
    rest = draw(_mostly("", st.sampled_from(["&cause=16", "&cause=200", "&cause=016", "&cause=", "&x=1", "&cause=16&cause=17"])))
    text = f"event={code}_{number}_{year}-{'-'.join(parts)}{rest}"
    return draw(_mostly(text, st.sampled_from([f" {text}", f"{text}\n", text.replace("_", "\u0660", 1),
                                               text + "\ud800", text + "\u00a0"])))


WIRES = st.builds(
    model.Wire,
    date_time=_mostly(None, st.integers(0, 2 * 10**12), _TEXT),
    data=st.sampled_from([True] * 7 + [False]).flatmap(lambda typical: _usual_data() if typical else st.one_of(st.none(), _TEXT)),
    event=_mostly(None, st.builds(
        model.WireEvent,
        type=_mostly("h", st.none(), st.sampled_from(["o", "s", "sp", "ep", "t", "H", " h", "x", ""]), _TEXT),
        side=_mostly(None, st.sampled_from(["A", "B", "a", " B", "C", ""]), _TEXT),
        cause=_CAUSES)),
    cause=_CAUSES,
    redirect_number=_NUMBERS,
    sip_id=_NUMBERS,
    numberA=_NUMBERS,
    extension=_mostly("0004", st.none(), st.sampled_from([" 0004 ", "", "x" * 16, "x" * 17, "00-4", "\u0664"]),
                      st.integers(), _TEXT),
    h323_conf_id=_mostly("BC5F236C 5AD211E9", st.sampled_from(["bc5f236c\t5ad211e9", " ", "", "a" * 64, "a" * 65, "é" * 10]),
                         st.none(), st.integers(), _TEXT),
)


def _wire(data, **fields):
    return model.Wire(data=data, h323_conf_id=fields.pop("h323_conf_id", "BC5F236C 5AD211E9"), **fields)


@settings(max_examples=1500, deadline=None)
@given(WIRES, st.sampled_from([None, 1558613711.0, 1767225600.0, 946684800.0]))
@example(_wire("event=h_79684881033_2019-05-23-15-60-59"), None)  # the edges of the calendar, always tried
@example(_wire("event=h_79684881033_2019-05-23-15-16-60"), None)
@example(_wire("event=h_79684881033_2019-05-23-24-16-59"), None)
@example(_wire("event=h_79684881033_2019-02-29-15-16-59"), None)
@example(_wire("event=h_79684881033_2019-13-23-15-16-59"), None)
@example(_wire("event=h_79684881033_1991-05-23-15-16-59"), None)
@example(_wire("event=h_79684881033_2019-05-23-15-16-59"), 1558613711.0 - 8 * 86400)
@example(_wire("event=sp_79684881033_2019-05-23-15-16-59&cause=16", numberA="+79684881034",
               event=model.WireEvent(type="ep", side="A", cause="17")), None)
@example(_wire("event=h_79684881033_2019-05-23-15-16-59", h323_conf_id="a\u00a0b"), None)
def test_usual_path_equals_general_path(item, now):
    """The usual-notification shortcut gives the general path's Notification or PayloadError, bounds included."""
    def result():
        try:
            return parse(item, now)
        except PayloadError as error:
            return (error.reason, error.message)

    fast = result()
    shortcut = model._parse_usual
    model._parse_usual = lambda raw, now: None  # always the general path
    try:
        slow = result()
    finally:
        model._parse_usual = shortcut
    assert fast == slow


def test_usual_path_taken_for_the_seed(seed_call):
    """The shortcut is not dead code: MTT's own notifications take it."""
    now = 1558613711.0 + 3600
    taken = [model._parse_usual(decode_wire(json.dumps(item).encode()), now) for item in seed_call]
    assert all(n is not None for n in taken)
