"""The hot path's shortcuts give exactly what the general code gives."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import given, settings
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
