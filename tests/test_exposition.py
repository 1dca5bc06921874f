"""The exporter's own exposition (mtt_exporter.metrics) against prometheus_client's.

The same operations are applied to this module's families and to prometheus_client's
Counter/Gauge/Histogram; both registries are rendered in the text format and in
OpenMetrics, and the outputs must parse (with prometheus_client's parsers) to the same
families, samples and exemplars, and be the same bytes. Rendering after each batch of
operations checks that what a scrape keeps from the last one is re-rendered when it changed.
"""

from __future__ import annotations

import gzip
import math
from unittest import mock

import prometheus_client
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from mtt_exporter import metrics
from mtt_exporter.metrics import exposition, render

LABEL_NAMES = ("zone", "code", "path")
label_values = st.text(max_size=12)  # any character: quotes, backslashes, newlines, non-ASCII
numbers = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e22, max_value=1e22)
# prometheus_client's OpenMetrics parser cannot read an escaped quote inside an exemplar's
# labels (its own exposition of one): those are compared as bytes below
EXEMPLAR_VALUES = st.text(st.characters(blacklist_characters='"', blacklist_categories=("Cs",)), max_size=20)
amounts = st.one_of(st.floats(min_value=0, max_value=1e22), st.integers(0, 10**6))


@st.composite
def families(draw):
    """(kind, help, label names, buckets) of a few families."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["counter", "gauge", "histogram"]))
        labelnames = tuple(draw(st.lists(st.sampled_from(LABEL_NAMES), max_size=3, unique=True)))
        buckets = None
        if kind == "histogram":
            # non-negative bounds: with a negative one prometheus_client leaves out `_sum`,
            # which its own OpenMetrics parser then refuses
            bounds = st.floats(min_value=0, max_value=1e22)
            buckets = tuple(sorted(draw(st.lists(bounds, min_size=1, max_size=6, unique=True))))
        out.append((kind, draw(st.text(max_size=30)), labelnames, buckets))
    return out


@st.composite
def scenario(draw):
    specs = draw(families())
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        batch = []
        for _ in range(draw(st.integers(0, 12))):
            index = draw(st.integers(0, len(specs) - 1))
            kind, _, labelnames, _ = specs[index]
            values = tuple(draw(label_values) for _ in labelnames)
            if values and draw(st.integers(0, 9)) == 0:
                op = ("remove",)
            elif kind == "counter":
                op = ("inc", draw(amounts))
            elif kind == "gauge":
                op = draw(st.sampled_from(["inc", "dec", "set"])), draw(
                    st.one_of(numbers, st.sampled_from([math.inf, -math.inf, math.nan])))
            else:
                exemplar = draw(st.one_of(st.none(), st.dictionaries(
                    st.sampled_from(["call_id", "trace_id"]), EXEMPLAR_VALUES, min_size=1)))
                op = ("observe", draw(st.floats(min_value=0, max_value=1e22)), exemplar)  # durations: >= 0
            batch.append((index, values, op, draw(st.floats(1e9, 2e9))))
        batches.append(batch)
    return specs, batches


def build(specs, library: bool):
    """Families of `specs` in a fresh registry: prometheus_client's, or this module's."""
    registry = CollectorRegistry()
    kinds = ({"counter": prometheus_client.Counter, "gauge": prometheus_client.Gauge,
              "histogram": prometheus_client.Histogram} if library else
             {"counter": metrics.Counter, "gauge": metrics.Gauge, "histogram": metrics.Histogram})
    made = []
    for i, (kind, help_text, labelnames, buckets) in enumerate(specs):
        extra = {"buckets": buckets} if kind == "histogram" else {}
        made.append(kinds[kind](f"family{i}", help_text, labelnames, registry=registry, **extra))
    return registry, made


def apply(made, batch) -> None:
    for index, values, op, now in batch:
        family = made[index]
        target = family.labels(*values) if values else family
        if op[0] == "remove":
            family.remove(*values)
            continue
        with mock.patch("time.time", return_value=now):  # exemplar timestamps alike in both
            getattr(target, op[0])(*op[1:])


def parsed(text: str, parse) -> list:
    """Families as comparable tuples; NaN made equal to itself."""
    def value(v):
        return "NaN" if isinstance(v, float) and math.isnan(v) else v

    return [(f.name, f.type, f.documentation,
             [(s.name, s.labels, value(s.value), s.timestamp, s.exemplar) for s in f.samples])
            for f in parse(text)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_same_samples_as_prometheus_client(case):
    specs, batches = case
    reference, library = build(specs, library=True)
    ours, mine = build(specs, library=False)
    for batch in batches:
        apply(library, batch)
        apply(mine, batch)
        for om, encode, parse in ((False, generate_latest, parse_text), (True, generate_openmetrics, parse_openmetrics)):
            expected, actual = encode(reference), render(ours, om)
            assert parsed(actual.decode(), parse) == parsed(expected.decode(), parse)
            assert actual == expected
            assert encode(ours) == expected  # the families read as prometheus_client Metrics too
            # gzip from compressed pieces, kept per family while its text is unchanged
            assert gzip.decompress(render(ours, om, gzip=True)) == expected


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        pytest.param("", "text/plain; version=0.0.4; charset=utf-8", id="no-accept"),
        pytest.param("application/openmetrics-text; version=1.0.0",
                     "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores",
                     id="openmetrics"),
        pytest.param("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;q=0.5",
                     "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8",
                     id="prometheus-3"),
        pytest.param("text/plain;version=1.0.0;escaping=values",
                     "text/plain; version=1.0.0; charset=utf-8; escaping=values", id="text-1.0.0"),
        pytest.param("text/plain;version=1.0.0;escaping=dots",
                     "text/plain; version=1.0.0; charset=utf-8; escaping=dots", id="dots-by-library"),
    ],
)
def test_negotiation_matches_prometheus_client(accept, content_type):
    """Every format prometheus_client negotiates gives its bytes, process collectors included."""
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry()
    prometheus_client.PlatformCollector(registry=registry)
    counter = metrics.Counter("mtt_test", "Test.", ["event"], registry=registry)
    counter.labels("a").inc()
    metrics.Histogram("mtt_test_seconds", "Test.", registry=registry, buckets=(1, 2)).observe(1.5, {"call_id": 'A"B\\C'})
    prometheus_client.GCCollector(registry=registry)
    encoder, expected_type = choose_encoder(accept)
    body, headers = exposition(registry, accept)
    assert headers == {"Content-Type": content_type} and expected_type == content_type
    assert body == encoder(registry)
    body, headers = exposition(registry, accept, "deflate, gzip;q=0.9")
    assert headers == {"Content-Type": content_type, "Content-Encoding": "gzip"}
    assert gzip.decompress(body) == encoder(registry)
