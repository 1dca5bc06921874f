"""The traffic tools as a user runs them: `simulate --check` and `replay` against a live exporter."""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

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
