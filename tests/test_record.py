"""--record: every received body as JSON lines, rotated; and `replay` of the files."""

from __future__ import annotations

import json

from mtt_exporter.record import Recorder, read_records
from mtt_exporter.server import RECORDER

from .conftest import NOW


async def test_every_received_body_is_recorded(make_client, clock, tmp_path, seed_call):
    path = tmp_path / "rec.jsonl"
    client, app = await make_client(record=path, max_body_bytes=1024)
    bodies = [json.dumps(seed_call[2]).encode(), b"{broken", b"\xff\xfe not utf-8", "event=o&h323_conf_id=1".encode()]
    types = ["application/json", "application/json", "text/plain", "application/x-www-form-urlencoded"]
    for i, (body, content_type) in enumerate(zip(bodies, types)):
        clock.now = NOW + i
        await client.post("/notify", data=body, headers={"Content-Type": content_type})
    await client.post("/notify?token=x", data=b"x" * 2048)  # too large: never read, not recorded
    app[RECORDER].flush()
    assert list(read_records([path])) == [(NOW + i, b, t) for i, (b, t) in enumerate(zip(bodies, types))]
    assert path.stat().st_mode & 0o777 == 0o600
    assert "token" not in path.read_text()


async def test_record_off_by_default(make_client):
    _, app = await make_client()
    assert RECORDER not in app


def test_rotation_keeps_the_newest_files_in_order(tmp_path):
    path = tmp_path / "rec.jsonl"
    recorder = Recorder(path, max_bytes=4096, keep=2)
    for i in range(200):
        recorder.write(float(i), b'{"n": %d, "pad": "%s"}' % (i, b"x" * 100), "application/json")
        if i % 10 == 9:
            recorder.flush()
    recorder.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.jsonl", "rec.jsonl.1", "rec.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    times = [t for t, _, _ in read_records([tmp_path / "rec.jsonl.2", tmp_path / "rec.jsonl.1", path])]
    assert times == [float(i) for i in range(200 - len(times), 200)]  # contiguous, oldest first, ends with the last


async def test_write_error_loses_the_recording_not_the_notification(make_client, tmp_path, seed_call, caplog, monkeypatch):
    client, app = await make_client(record=tmp_path / "rec.jsonl")
    recorder = app[RECORDER]

    def disk_full(data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder, "_file", type("F", (), {"write": staticmethod(disk_full), "closed": False, "close": lambda self: None})())
    monkeypatch.setattr("mtt_exporter.record.RECORD_FLUSH_BYTES", 1)  # flush inside the request
    response = await client.post("/notify", json=seed_call[2])
    assert response.status == 200
    assert "cannot write --record file" in caplog.text




def test_undecodable_content_type_is_escaped(tmp_path):
    # aiohttp keeps header bytes that are not UTF-8 as surrogates; the line must still be written
    recorder = Recorder(tmp_path / "rec.jsonl", max_bytes=4096, keep=1)
    recorder.write(1.5, b"{}", "text/\udcff")
    recorder.close()
    assert list(read_records([tmp_path / "rec.jsonl"])) == [(1.5, b"{}", "text/\udcff")]
