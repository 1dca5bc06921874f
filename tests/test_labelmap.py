"""The label map: parsing, normalised keys, every error with file and line, caps, look-ups."""

from __future__ import annotations

import pytest

from mtt_exporter.labelmap import NO_LABELS, OTHER, UNKNOWN, LabelMapError, load, parse

from .conftest import DATA

MAPS = DATA / "labelmap"


def test_good_file_normalises_every_key_format():
    labels = load(MAPS / "good.yml")
    assert labels.lines == {"79586488002": "sales", "79586488003": "support", "79586488003/0004": "support-kazan"}
    assert labels.destinations == {
        "79684881033": "duty-mobile", "74950000000": "office-pbx", "74950000001": "office-pbx", "79160000000": "night-shift"}
    assert labels.line_values == ("sales", "support", "support-kazan", OTHER, UNKNOWN)
    assert labels.destination_values == ("duty-mobile", "night-shift", "office-pbx", OTHER, UNKNOWN)


def test_bad_file_lists_every_error_with_file_and_line():
    """Like blackbox_exporter's testdata: the invalid file sits beside the exact errors it must produce."""
    with pytest.raises(LabelMapError) as caught:
        load(MAPS / "bad.yml")
    expected = (MAPS / "bad.errors").read_text().splitlines()
    assert caught.value.errors == [f"{MAPS}/{line}" for line in expected]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        pytest.param("lines: [\n", "f.yml:2: not valid YAML", id="broken YAML"),
        pytest.param("- a\n- b\n", "f.yml:1: expected a mapping with 'lines' and 'destinations'", id="a list"),
        pytest.param("lines: 5\n", "f.yml:1: lines must be a mapping of number: name", id="section not a mapping"),
        pytest.param('lines:\n  "79000000001": a\n  "8 900 000-00-01": b\n',
                     "f.yml:3: the same number as line 2 (after normalising)", id="same number twice"),
        pytest.param('lines:\n  "79000000001": a\n  "79000000002": b\n  "79000000003": c\n',
                     "f.yml:1: 3 distinct lines names, more than the cap of 2 (--max-lines)", id="over the line cap"),
        pytest.param('destinations:\n  "79000000001": a\n  "79000000002": b\n  "79000000003": c\n',
                     "f.yml:1: 3 distinct destinations names, more than the cap of 2 (--max-destinations)",
                     id="over the destination cap"),
        pytest.param('lines:\n  "79000000001": "a b"\n', "f.yml:2: name 'a b' must be", id="space in a name"),
        pytest.param('lines:\n  "79000000001": unknown\n', "f.yml:2: name 'unknown' is reserved", id="reserved name"),
        pytest.param('lines:\n  "79000000001": "x\\"}"\n', "f.yml:2: name 'x\"}' must be", id="quote in a name"),
    ],
)
def test_invalid_map(text, error):
    with pytest.raises(LabelMapError) as caught:
        parse(text, "f.yml", max_lines=2, max_destinations=2)
    assert any(e.startswith(error) for e in caught.value.errors), caught.value.errors


def test_errors_never_echo_a_number():
    with pytest.raises(LabelMapError) as caught:
        parse('lines:\n  "7958648800299999999999999999999999999999999999999999999999999999999": a\n', "f.yml")
    assert "79586488" not in str(caught.value)


def test_cap_counts_names_not_numbers():
    numbers = "".join(f'  "7900000{i:04d}": shared\n' for i in range(200))
    assert parse("lines:\n" + numbers, max_lines=1).line_values == ("shared", OTHER, UNKNOWN)


@pytest.mark.parametrize(
    ("text", "lines", "destinations"),
    [
        pytest.param("", (OTHER, UNKNOWN), (OTHER, UNKNOWN), id="empty file"),
        pytest.param("lines:\ndestinations:\n", (OTHER, UNKNOWN), (OTHER, UNKNOWN), id="empty sections"),
        pytest.param("# only a comment\n", (OTHER, UNKNOWN), (OTHER, UNKNOWN), id="comment only"),
    ],
)
def test_empty_maps(text, lines, destinations):
    labels = parse(text)
    assert (labels.line_values, labels.destination_values) == (lines, destinations)


@pytest.mark.parametrize(
    ("sip_id", "extension", "line"),
    [
        pytest.param("79586488002", "", "sales", id="mapped"),
        pytest.param("79586488002", "0004", "sales", id="extension not mapped: the sip_id's line"),
        pytest.param("79586488003", "0004", "support-kazan", id="sip_id/extension first"),
        pytest.param("79586488003", "4", "support", id="extension compared as written"),
        pytest.param("79990000000", "", OTHER, id="not in the map"),
        pytest.param("", "", UNKNOWN, id="no sip_id"),
    ],
)
def test_line_look_up(sip_id, extension, line):
    assert load(MAPS / "good.yml").line(sip_id, extension) == line


@pytest.mark.parametrize(
    ("number", "destination"),
    [
        pytest.param("79684881033", "duty-mobile", id="mapped"),
        pytest.param("74950000001", "office-pbx", id="two numbers, one name"),
        pytest.param("79990000000", OTHER, id="not in the map"),
        pytest.param("", UNKNOWN, id="no redirect number"),
    ],
)
def test_destination_look_up(number, destination):
    assert load(MAPS / "good.yml").destination(number) == destination


def test_without_a_map_everything_is_other():
    assert (NO_LABELS.line("79586488002"), NO_LABELS.line(""), NO_LABELS.destination("")) == (OTHER, OTHER, OTHER)
    assert NO_LABELS.line_values == NO_LABELS.destination_values == (OTHER,)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param(b"\xff\xfe", "not UTF-8", id="binary"),
        pytest.param(b"#" * (1024 * 1024 + 1), "larger than", id="too big"),
    ],
)
def test_unreadable_file(tmp_path, content, error):
    path = tmp_path / "map.yml"
    path.write_bytes(content)
    with pytest.raises(LabelMapError, match=error):
        load(path)
    with pytest.raises(LabelMapError, match="cannot read"):
        load(tmp_path / "missing.yml")


def test_the_kubernetes_example_map_is_valid():
    example = DATA.parent.parent / "deploy" / "kubernetes" / "components" / "label-map" / "label-map.yaml"
    labels = load(example)
    assert labels.line_values == ("sales", OTHER, UNKNOWN) and labels.destination("79684881033") == "duty-mobile"
