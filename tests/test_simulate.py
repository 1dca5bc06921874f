"""Simulator: generated traffic through the app must give exactly the truth, and diff must notice when not."""

from __future__ import annotations

import json

import pytest

from mtt_exporter.simulate import SimConfig, Truth, diff, generate, label_map_yaml, leg_outcome
from mtt_exporter.server import tick


GRACE = 15.0
FAULTS = dict(duplicate_pct=5, reorder_pct=10, malformed_pct=2, unknown_event_pct=2)


async def feed(client, app, clock, deliveries, settle: bool = True) -> str:
    """Post deliveries on the fake receipt clock, ticking as the server's ticker would; return /metrics."""
    start = clock.now
    for d in deliveries:
        clock.now = max(clock.now, start + d.at)
        tick(app, clock.now)
        response = await client.post("/notify", data=d.payload(), headers={"Content-Type": "application/json"})
        expected = 400 if d.kind in ("malformed", "unknown_event") else 200
        assert response.status == expected, (d, await response.text())
    if settle:
        clock.now += GRACE + 1
        tick(app, clock.now)
    return await (await client.get("/metrics")).text()


CONFIGS = {
    "extended, quirks and every fault": SimConfig(calls=250, seed=1, **FAULTS),
    "basic events, no premedia, no quirks": SimConfig(calls=200, seed=2, extended=False, premedia=False, quirks=False),
    "parallel ringing and abandons": SimConfig(calls=200, seed=3, legs_max=5, parallel_share=0.8, abandon_share=0.4, **FAULTS),
    "heavy faults, all legs fail": SimConfig(calls=150, seed=4, answer_ratio=0, duplicate_pct=40, reorder_pct=50,
                                             malformed_pct=20, unknown_event_pct=20),
    "mapped: several lines and destinations": SimConfig(calls=250, seed=12, mapped=True, lines=4, destinations=5,
                                                        legs_max=4, **FAULTS),
    "mapped: one line, one destination, all unmapped legs": SimConfig(
        calls=100, seed=13, mapped=True, lines=1, destinations=1, unmapped_share=1.0, legs_max=3),
}


@pytest.mark.parametrize("config", [pytest.param(v, id=k) for k, v in CONFIGS.items()])
async def test_workload_through_the_app_matches_truth(make_client, clock, config, tmp_path):
    overrides = {}
    if config.mapped:
        (tmp_path / "map.yml").write_text(label_map_yaml(config))
        overrides["label_map"] = tmp_path / "map.yml"
    client, app = await make_client(call_end_grace=GRACE, **overrides)
    workload = generate(config)
    exposition = await feed(client, app, clock, workload.deliveries)
    assert diff(workload.truth, exposition) == []


def test_mapped_truth_names_every_line_and_destination():
    config = SimConfig(calls=400, seed=14, mapped=True, lines=3, destinations=3)
    truth = generate(config).truth
    lines = {dict(s.labels).get("line") for s in truth.samples() if s.name == "mtt_calls_total" and s.value}
    destinations = {dict(s.labels).get("destination") for s in truth.samples() if s.name == "mtt_call_legs_total" and s.value}
    assert lines == {"sales", "support", "kazan-office", "other"}
    assert destinations == {"duty-mobile", "office-pbx", "night-shift", "other"}
    waits = {dict(s.labels)["outcome"] for s in truth.samples() if s.name == "mtt_call_wait_seconds_count" and s.value}
    assert waits == {"answered", "abandoned"}


async def test_diff_notices_a_wrong_label_map(make_client, clock, tmp_path):
    config = SimConfig(calls=60, seed=15, mapped=True)
    (tmp_path / "map.yml").write_text(label_map_yaml(config).replace("sales", "renamed"))
    client, app = await make_client(call_end_grace=GRACE, label_map=tmp_path / "map.yml")
    workload = generate(config)
    problems = diff(workload.truth, await feed(client, app, clock, workload.deliveries))
    assert any('line="sales"' in p for p in problems), problems


async def test_diff_reports_a_missing_notification(make_client, clock):
    client, app = await make_client(call_end_grace=GRACE)
    workload = generate(SimConfig(calls=30, seed=5, **FAULTS))
    dropped = next(i for i, d in enumerate(workload.deliveries) if d.kind == "event" and d.body["event"]["type"] == "o")
    deliveries = workload.deliveries[:dropped] + workload.deliveries[dropped + 1:]
    problems = diff(workload.truth, await feed(client, app, clock, deliveries))
    assert "mtt_call_attempts_total{line=\"other\"}: expected" in "\n".join(problems)
    assert any(p.startswith('mtt_notifications_total{event="originate"}') for p in problems)


async def test_diff_before_grace_sees_open_calls(make_client, clock):
    client, app = await make_client(call_end_grace=GRACE)
    workload = generate(SimConfig(calls=50, seed=6, answer_ratio=0))
    problems = diff(workload.truth, await feed(client, app, clock, workload.deliveries, settle=False))
    assert any(p.startswith("mtt_calls_in_progress: expected 0, got") for p in problems)


async def test_delta_against_an_exporter_with_earlier_traffic(make_client, clock):
    client, app = await make_client(call_end_grace=GRACE)
    earlier = generate(SimConfig(calls=40, seed=7, run_id="earlier", **FAULTS))
    baseline = await feed(client, app, clock, earlier.deliveries)
    # the same seed again: only run_id keeps these calls apart from the earlier ones
    workload = generate(SimConfig(calls=40, seed=7, run_id="now", **FAULTS))
    exposition = await feed(client, app, clock, workload.deliveries)
    assert diff(workload.truth, exposition, baseline=baseline) == []
    assert diff(workload.truth, exposition) != []  # absolute values include the earlier run


def test_same_seed_same_traffic_and_run_id_changes_call_ids():
    a, b = generate(SimConfig(calls=20, seed=9, **FAULTS)), generate(SimConfig(calls=20, seed=9, **FAULTS))
    assert [(d.at, d.payload()) for d in a.deliveries] == [(d.at, d.payload()) for d in b.deliveries]
    assert a.truth.samples() == b.truth.samples()
    c = generate(SimConfig(calls=20, seed=9, run_id="other", **FAULTS))
    ids = lambda w: {d.body["h323_conf_id"].replace(" ", "").upper() for d in w.deliveries if isinstance(d.body, dict)}
    assert ids(a).isdisjoint(ids(c))


def test_deliveries_in_send_order_and_truth_round_trips():
    workload = generate(SimConfig(calls=300, seed=10, **FAULTS))
    times = [d.at for d in workload.deliveries]
    assert times == sorted(times)
    assert Truth.from_json(json.loads(json.dumps(workload.truth.to_json()))).samples() == workload.truth.samples()


def test_default_mix_exercises_every_outcome():
    truth = generate(SimConfig(calls=2000, seed=11, parallel_share=0.3)).truth
    for outcome in ("answered", "busy", "no_answer", "rejected", "subscriber_absent", "not_selected",
                    "address_error", "abandoned", "network_failure"):
        assert truth.get("mtt_call_legs_total", outcome=outcome) > 0, outcome
    for outcome in ("answered", "unanswered", "abandoned"):
        assert truth.get("mtt_calls_total", outcome=outcome) > 0, outcome
    assert truth.get("mtt_call_hangups_total", cause="unknown", side="unknown") > 0
    assert truth.get("mtt_premedia_duration_seconds_count", side="A") > 0
    assert truth.get("mtt_talk_duration_seconds_count") > 0


@pytest.mark.parametrize(
    ("answered", "cause", "side", "outcome"),
    [
        pytest.param(True, 16, "B", "answered", id="answered"),
        pytest.param(False, 16, "A", "abandoned", id="16 from A"),
        pytest.param(False, 31, "", "no_answer", id="31 unknown side"),
        pytest.param(False, 26, "", "not_selected", id="parallel loser"),
        pytest.param(False, None, "B", "network_failure", id="no cause"),
        pytest.param(False, 99, "B", "network_failure", id="other cause"),
        pytest.param(False, 28, "B", "address_error", id="invalid number format"),
    ],
)
def test_reference_leg_outcome(answered, cause, side, outcome):
    assert leg_outcome(answered, cause, side) == outcome


def test_config_rejects_unknown_cause_category():
    with pytest.raises(ValueError, match="unknown categories"):
        SimConfig(cause_mix={"busy": 1, "nonsense": 1})
