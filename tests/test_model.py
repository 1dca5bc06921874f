"""Parser: the seed's quirks, table-driven."""

from __future__ import annotations

import pytest

from mtt_exporter.model import (
    Conflict,
    EventType,
    PayloadError,
    Reason,
    Side,
    mask_number,
    moscow_to_unix,
    normalise_number,
    parse,
    parse_cause,
)

CONF = "BC5F236C5AD211E981BA5CB901FED6FC"
T_O = moscow_to_unix("2019-05-23-15-15-19")


def test_moscow_time_is_utc_plus_3():
    # 2019-05-23 15:15:11 MSK == 12:15:11 UTC; the seed says date_time 1558613711
    assert moscow_to_unix("2019-05-23-15-15-11") == 1558613711


@pytest.mark.parametrize(
    ("index", "event", "side", "redirect", "number_a", "stamp", "cause"),
    [
        pytest.param(0, EventType.PREMEDIA_START, Side.A, "", "79154368886", "2019-05-23-15-15-11", None, id="sp A"),
        pytest.param(1, EventType.PREMEDIA_END, Side.A, "", "79154368886", "2019-05-23-15-15-18", None, id="ep A"),
        pytest.param(2, EventType.ORIGINATE, Side.UNKNOWN, "79684881033", "79154368886", "2019-05-23-15-15-19", None, id="o"),
        pytest.param(3, EventType.ANSWER, Side.UNKNOWN, "79684881033", "79154368886", "2019-05-23-15-15-30", 16, id="s with &cause"),
        pytest.param(4, EventType.PREMEDIA_START, Side.B, "79684881033", "79154368886", "2019-05-23-15-15-30", None, id="sp B"),
        pytest.param(5, EventType.PREMEDIA_END, Side.B, "79684881033", "79154368886", "2019-05-23-15-15-39", None, id="ep B spaced id"),
        pytest.param(6, EventType.TALK, Side.UNKNOWN, "79684881033", "79154368886", "2019-05-23-15-15-40", None, id="t client_id key"),
        pytest.param(7, EventType.HANGUP, Side.B, "79684881033", "79154368886", "2019-05-23-15-16-59", 16, id="h"),
    ],
)
def test_seed_examples(seed_call, index, event, side, redirect, number_a, stamp, cause):
    n = parse(seed_call[index])
    assert n.conf_id == CONF
    assert (n.event, n.side, n.redirect_number, n.number_a) == (event, side, redirect, number_a)
    # the time inside data wins over date_time, which is hours off in examples 4 and 8
    assert n.time == moscow_to_unix(stamp)
    assert n.cause == cause
    assert n.sip_id == "79586488002"
    assert n.conflicts == ()


def _item(**fields):
    base = {"data": "event=o_79684881033_2019-05-23-15-15-19", "h323_conf_id": "bc5f 236c"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        pytest.param(_item(), {"conf_id": "BC5F236C", "event": EventType.ORIGINATE, "time": T_O}, id="data and id only"),
        pytest.param(_item(data=None, event={"type": "o"}, date_time=1558613719), {"time": 1558613719.0}, id="date_time fallback"),
        pytest.param(_item(data=None, event={"type": "o"}, date_time=1558613719123), {"time": 1558613719.123}, id="date_time in ms"),
        pytest.param(_item(data=None, event={"type": "o"}, date_time="1558613719"), {"time": 1558613719.0}, id="date_time as string"),
        pytest.param(_item(event={"type": "s"}), {"event": EventType.ANSWER, "conflicts": (Conflict.TYPE,)}, id="event wins for type"),
        pytest.param(_item(data="event=h_79684881033_2019-05-23-15-16-59&cause=17", event={"type": "h", "cause": "16"}),
                     {"cause": 16, "conflicts": (Conflict.CAUSE,)}, id="event.cause wins over data"),
        pytest.param(_item(data="event=h_79684881033_2019-05-23-15-16-59", cause=17), {"cause": 17}, id="top-level cause"),
        pytest.param(_item(data="event=h_79684881033_2019-05-23-15-16-59&x=1&cause=19"), {"cause": 19}, id="data cause among params"),
        pytest.param(_item(data="event=h_79684881033_2019-05-23-15-16-59&cause=abc"), {"cause": None}, id="cause not a number"),
        pytest.param(_item(data="event=h_79684881033_2019-05-23-15-16-59", event={"type": "h", "cause": 300}), {"cause": None}, id="cause out of range"),
        pytest.param(_item(**{"event ": {"type ": "h", " side": "b"}}), {"event": EventType.HANGUP, "side": Side.B}, id="keys with spaces"),
        pytest.param(_item(event={"type": "h", "side": "C"}), {"side": Side.UNKNOWN}, id="odd side is unknown"),
        pytest.param(_item(redirect_number="+79684881033"), {"redirect_number": "79684881033"}, id="+7 number"),
        pytest.param(_item(redirect_number="89684881033"), {"redirect_number": "79684881033"}, id="8 number"),
        pytest.param(_item(redirect_number="9684881033"), {"redirect_number": "79684881033"}, id="10-digit number"),
        pytest.param(_item(redirect_number="79684881034"), {"redirect_number": "79684881034", "conflicts": (Conflict.NUMBER,)}, id="number conflict"),
        pytest.param(_item(data="event=o_+79684881033_2019-05-23-15-15-19"), {"redirect_number": "79684881033"}, id="number in data"),
        pytest.param(_item(h323_conf_id=" BC5F236C 5AD211E9  81BA5CB9 01FED6FC "), {"conf_id": CONF}, id="conf id spaces"),
        pytest.param(_item(h323_conf_id=12345), {"conf_id": "12345"}, id="conf id number"),
        pytest.param(_item(data="event=sp__2019-05-23-15-15-11", event={"type": "sp", "side": "A"}), {"number_a": "", "side": Side.A}, id="premedia A without numbers"),
        pytest.param(_item(extension="0004", client_id=None), {"event": EventType.ORIGINATE}, id="extension kept as string"),
    ],
)
def test_parse_quirks(item, expected):
    n = parse(item)
    for name, value in expected.items():
        assert getattr(n, name) == value, name


@pytest.mark.parametrize(
    ("item", "reason", "message"),
    [
        pytest.param([], Reason.MALFORMED, "expected a JSON object", id="array item not object"),
        pytest.param("text", Reason.MALFORMED, "expected a JSON object", id="string"),
        pytest.param({}, Reason.INVALID, "no event type", id="empty object"),
        pytest.param({"h323_conf_id": "X", "event": {"type": "zz"}, "date_time": 1}, Reason.UNKNOWN_EVENT, "unknown event type 'zz'", id="unknown type"),
        pytest.param({"h323_conf_id": "X", "data": "event=q_7_2019-05-23-15-15-19"}, Reason.UNKNOWN_EVENT, "unknown event", id="unknown type in data"),
        pytest.param({"data": "event=o_7_2019-05-23-15-15-19"}, Reason.INVALID, "h323_conf_id: missing", id="no conf id"),
        pytest.param({"data": "event=o_7_2019-05-23-15-15-19", "h323_conf_id": "   "}, Reason.INVALID, "h323_conf_id: missing", id="blank conf id"),
        pytest.param({"data": "event=o_7_2019-05-23-15-15-19", "h323_conf_id": "A" * 65}, Reason.INVALID, "longer than", id="huge conf id"),
        pytest.param({"data": "garbage", "h323_conf_id": "X"}, Reason.INVALID, "data: expected", id="bad data"),
        pytest.param({"data": "event=o_7_2019-02-30-15-15-19", "h323_conf_id": "X"}, Reason.INVALID, "no such date", id="impossible date"),
        pytest.param({"event": {"type": "o"}, "h323_conf_id": "X"}, Reason.INVALID, "no event time", id="no time"),
        pytest.param({"event": {"type": "o"}, "h323_conf_id": "X", "date_time": "soon"}, Reason.INVALID, "no event time", id="bad date_time"),
        pytest.param({"event": 5, "h323_conf_id": "X", "date_time": 1}, Reason.INVALID, "event: expected an object", id="event a number"),
        pytest.param({"data": 5, "h323_conf_id": "X"}, Reason.INVALID, "data", id="data not string"),
        pytest.param({"h323_conf_id": {"a": 1}, "data": "event=o_7_2019-05-23-15-15-19"}, Reason.INVALID, "h323_conf_id", id="conf id object"),
    ],
)
def test_parse_errors(item, reason, message):
    with pytest.raises(PayloadError) as caught:
        parse(item)
    assert caught.value.reason is reason
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("+7 968 488-10-33", "79684881033"), ("8(968)4881033", "79684881033"), ("442071234567", "442071234567"), ("abc", "abc")],
)
def test_normalise_number(raw, expected):
    assert normalise_number(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(16, 16), ("16", 16), (" 0 ", 0), (127, 127), (128, None), (-1, None), (16.0, 16), (16.5, None), (True, None), ("", None), (None, None)],
)
def test_parse_cause(raw, expected):
    assert parse_cause(raw) == expected


def test_mask_number():
    assert mask_number("79684881033") == "7968*****33"
    assert mask_number("123") == "***"
