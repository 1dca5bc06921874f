"""The traffic tools as a user runs them: `simulate --check` and `replay` against a live exporter."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from mtt_exporter.replay import SendStats
from mtt_exporter.server import RECORDER, create_app
from mtt_exporter.settings import Settings
from mtt_exporter.simulate import SimConfig, diff, generate

from .conftest import NOW

#: The live exporters here decide unanswered calls after 1 s of receipt time, not 15.
GRACE = "1"
WAIT = "2.5"


async def live_exporter(**overrides) -> TestServer:
    """An exporter on a real port with the real clock and ticker, as `make run` starts it."""
    settings = Settings(_cli_parse_args=[], call_end_grace=float(GRACE), **overrides)  # type: ignore[call-arg]
    server = TestServer(create_app(settings, registry=CollectorRegistry()), host="127.0.0.1")
    await server.start_server()
    return server


async def scrape(server: TestServer) -> str:
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/metrics")) as response:
        return await response.text()


async def run_tool(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtt_exporter", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, out.decode()


async def test_recorded_traffic_replays_to_the_same_numbers(make_client, clock, tmp_path):
    # record a simulated workload in one exporter ...
    path = tmp_path / "rec.jsonl"
    client, app = await make_client(record=path)
    workload = generate(SimConfig(calls=60, seed=21, duplicate_pct=5, reorder_pct=10, malformed_pct=3, unknown_event_pct=3))
    for d in workload.deliveries:
        clock.now = NOW + d.at
        await client.post("/notify", data=d.payload(), headers={"Content-Type": d.content_type})
    app[RECORDER].flush()
    # ... and replay the file into a fresh one: the same numbers come out
    server = await live_exporter()
    try:
        code, out = await run_tool("replay", str(path), "--url", str(server.make_url("/notify")), "--as-fast-as-possible")
        assert code == 0, out
        await asyncio.sleep(float(WAIT))  # the grace period and a tick
        assert diff(workload.truth, await scrape(server)) == []
    finally:
        await server.close()


async def test_simulate_check_against_an_exporter_with_traffic(seed_call):
    server = await live_exporter()
    url = str(server.make_url("/notify"))
    try:
        async with aiohttp.ClientSession() as session:
            await session.post(url, json=seed_call)  # earlier traffic: --check compares the change
        await asyncio.sleep(float(WAIT))  # settled (its caller's wait is measured after the grace period)
        code, out = await run_tool("simulate", "--url", url, "--check", "--wait", WAIT, "--calls", "80", "--rate", "400",
                                   "--duplicate-pct", "5", "--reorder-pct", "10", "--malformed-pct", "3",
                                   "--unknown-event-pct", "3", "--seed", "3")
        assert code == 0, out
        assert out.rstrip().endswith("0 differences")
        assert "mtt_calls_total" in out  # the summary table
    finally:
        await server.close()


async def test_simulate_writes_the_label_map_the_exporter_reloads(tmp_path):
    path = tmp_path / "labels.yml"
    path.write_text("")  # the exporter starts with an empty map; the simulator fills it and asks for a reload
    server = await live_exporter(label_map=path)
    try:
        code, out = await run_tool("simulate", "--url", str(server.make_url("/notify")), "--check", "--wait", WAIT,
                                   "--calls", "80", "--rate", "400", "--lines", "2", "--destinations", "2",
                                   "--label-map", str(path), "--seed", "4")
        assert code == 0, out
        assert out.rstrip().endswith("0 differences")
        assert ": sales" in path.read_text()
        text = await scrape(server)
        assert 'line="sales"' in text and 'destination="office-pbx"' in text
    finally:
        await server.close()


async def test_simulate_check_fails_on_a_wrong_exporter(tmp_path):
    # a call table of 5 evicts calls still in progress: the numbers cannot match
    server = await live_exporter(max_calls=5)
    try:
        code, out = await run_tool("simulate", "--url", str(server.make_url("/notify")), "--check", "--wait", WAIT,
                                   "--calls", "40", "--rate", "400", "--truth", str(tmp_path / "truth.json"))
        assert code == 1, out
        assert "mtt_calls_evicted_total" in out and "0 differences" not in out
        assert '"samples"' in (tmp_path / "truth.json").read_text()
    finally:
        await server.close()


async def test_replay_refuses_a_file_that_is_not_a_recording(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("not json\n")
    code, out = await run_tool("replay", str(path), "--url", "http://127.0.0.1:9/notify")
    assert code == 2 and "x.jsonl:1" in out


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        pytest.param(["replay", "--as-fast-as-possible"], "every body was refused", id="replay"),
        pytest.param(["simulate", "--calls", "5", "--rate", "400", "--check", "--wait", "0"],
                     "every request was refused", id="simulate --check"),
    ],
)
async def test_every_request_refused_exits_1_naming_the_token(tmp_path, seed_call, monkeypatch, tool, expected):
    monkeypatch.delenv("MTT_EXPORTER_TOKEN", raising=False)
    path = tmp_path / "rec.jsonl"
    path.write_text(json.dumps({"time": NOW, "body": json.dumps(seed_call[0])}) + "\n")
    server = await live_exporter(token="s3cret")
    try:
        args = [tool[0], *([str(path)] if tool[0] == "replay" else []), *tool[1:], "--url", str(server.make_url("/notify"))]
        code, out = await run_tool(*args)
        assert code == 1, out
        assert "answered 401: wrong or missing token" in out and expected in out
    finally:
        await server.close()


async def test_simulate_check_suggests_metrics_url_when_metrics_are_elsewhere():
    server = await live_exporter(metrics_listen="127.0.0.1:1")  # not started: /metrics is not on the main port
    try:
        code, out = await run_tool("simulate", "--url", str(server.make_url("/notify")), "--check", "--calls", "1")
        assert code == 2, out
        assert "404" in out and "--metrics-url" in out
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("results", "all_refused", "lines"),
    [
        pytest.param({("event", "401"): 3}, True, ["3 answered 401: wrong or missing token: give --token or $MTT_EXPORTER_TOKEN"],
                     id="only 401"),
        pytest.param({("event", "200"): 5, ("recorded", "400"): 2}, False,
                     ["2 answered 400: bodies refused as invalid (a recording holds the rejected bodies too)"],
                     id="some refused"),
        pytest.param({("event", "403"): 1, ("event", "429"): 2}, True,
                     ["2 answered 429: the exporter is overloaded (--max-concurrent-requests): lower --concurrency",
                      "1 answered 403: this address is outside the exporter's --allow-cidr"], id="mixed, most first"),
        pytest.param({("event", "ClientConnectorError"): 1}, True, [], id="transport errors only"),
        pytest.param({("event", "200"): 1}, False, [], id="all accepted"),
    ],
)
def test_refusals_summarised_by_status(results, all_refused, lines):
    stats = SendStats(results=Counter(results), sent=sum(results.values()))
    assert stats.all_refused() is all_refused
    assert stats.refusal_lines() == lines


async def test_replay_skips_a_torn_line_and_says_so(tmp_path, seed_call):
    # what a full disk left in a recording of the old writer: half a line glued to the next
    lines = [json.dumps({"time": NOW + i, "content_type": "application/json", "body": json.dumps(n)}) for i, n in enumerate(seed_call)]
    path = tmp_path / "rec.jsonl"
    path.write_text("\n".join([lines[0], lines[1][:40] + lines[2], *lines[3:]]) + "\n")
    server = await live_exporter()
    try:
        code, out = await run_tool("replay", str(path), "--url", str(server.make_url("/notify")), "--as-fast-as-possible")
        assert code == 0, out
        assert "1 lines skipped, not a recorded body (first: " in out and "rec.jsonl:2" in out
        assert f"{len(seed_call) - 2} requests" in out
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("tool", "present"),
    [
        pytest.param("replay", ["Exit status 1", "every body was refused", "--token SECRET", "MTT_EXPORTER_TOKEN",
                                "example:"], id="replay"),
        pytest.param("simulate", ["Exit status", "--metrics-url URL", "--metrics-listen", "--token SECRET",
                                  "MTT_EXPORTER_TOKEN", "example:"], id="simulate"),
    ],
)
def test_tool_help_stands_on_its_own(capsys, tool, present):
    module = __import__(f"mtt_exporter.{tool}", fromlist=["main"])
    with pytest.raises(SystemExit) as caught:
        module.main(["--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert [text for text in present if text not in out] == []
