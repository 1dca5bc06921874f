"""Long fuzz run: mutated requests from the operator's examples against a running exporter.

    .venv/bin/python bench/fuzz.py [--requests 100000] [--seconds 900] [--seed 1] [--out FILE]
    .venv/bin/python bench/fuzz.py --smoke     # a few seconds (the test suite runs this)

Starts `python -m mtt_exporter` on 127.0.0.1 with a token, an allow-list behind a trusted
proxy, small limits and a small call cap, then sends requests built from the seed's eight
notifications: JSON-level mutations (fields replaced by hostile values, removed, renamed,
`data` and `event` taken apart, batches), byte-level mutations (flips, cuts, repeats),
gzip/deflate bodies (some broken), urlencoded forms, every token form, forged
X-Forwarded-For, odd content types, and raw garbage on the socket. Every request is
reproducible from --seed and its index.

Passes (exit 0) when: no 5xx, no new series on /metrics (label values stay in their closed
sets), the process is alive and healthy at the end, and its RSS after the run is within
--rss-slack MB of the RSS after the warm-up (the first tenth). Prints Markdown, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import gzip
import json
import random
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))

from tests.process import Exporter  # noqa: E402

SEED = json.loads((ROOT / "tests" / "data" / "seed_call.json").read_text())
TOKEN = "fuzz-token-0123456789"
FIELDS = sorted({key for item in SEED for key in item} | {"cause", "redirect_number", "event"})

HOSTILE_STRINGS = [
    "", " ", "\x00", "\u202e79684881033", "😀" * 50, "A" * 10_000, "7" * 70, "+7 (968) 488-10-33", "8 968 488 10 33",
    "null", "NaN", "-1", "1e309", "0x10", "{}", "[]", "event=", "event=h_", "event=h__", "<script>", "' OR 1=1 --",
    "%00", "../../etc/passwd", "\r\nX-Injected: 1", "BC5F236C 5AD211E9 81BA5CB9 01FED6FC", " bc5f236c5ad211e981ba5cb901fed6fc ",
    # issue #9: lone surrogates (JSON "\ud800") broke OpenMetrics exemplars and dedup keys
    "\ud800", "BC5F\udfff236C", "7968\ud83d4881033", "\x1b[31m", "\u200b",
]
HOSTILE_NUMBERS = [0, -1, 1, 16, 17, 26, 127, 128, 255, 2**31, 2**63, 2**64 + 1, -(2**63), 1e308, -1e308, 0.5, 16.0,
                   1558613711, 1558613711000, 1558613711000000, 10**18, 10**4000 // 10**3990]
DATA_CODES = ["o", "s", "h", "sp", "ep", "t", "x", "", "H", "oo", "s p"]
STAMPS = ["2019-05-23-15-16-59", "2019-02-30-12-00-00", "2019-13-01-00-00-00", "0000-00-00-00-00-00", "9999-12-31-23-59-59",
          "2019-5-3-1-2-3", "2019-05-23-15-16", "x"]
BOMB = gzip.compress(b" " * 3_000_000)
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "text/plain", "", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=zz", "application/xml", "application/json; charset=koi8-r", "*/*"]


def hostile_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice(HOSTILE_NUMBERS)
    if kind in (3, 4):
        return rng.choice(HOSTILE_STRINGS)
    if kind == 5:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6:
        return {rng.choice(FIELDS + ["type", "side"]): hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return "[" * rng.randrange(1, 5000)  # deep nesting as text, becomes a string value


def mutate_data(rng: random.Random) -> str:
    parts = [f"event={rng.choice(DATA_CODES)}", rng.choice(["79684881033", "", "79154368886", "7" * 80, "_"]),
             rng.choice(STAMPS)]
    text = "_".join(parts) + rng.choice(["", "&cause=16", "&cause=", "&cause=abc", "&cause=16&cause=17", "&&", "&x"])
    return text if rng.random() < 0.8 else text.replace("_", rng.choice(["-", "", "__", " _ "]))


def mutate_item(rng: random.Random) -> Any:
    item = copy.deepcopy(rng.choice(SEED))
    if rng.random() < 0.7:  # mostly distinct calls: the table fills and evicts, and per-call limits hold
        item["h323_conf_id"] = f"{rng.getrandbits(128):032X}"
    for _ in range(rng.randrange(0, 5)):
        op = rng.randrange(7)
        key = rng.choice(FIELDS)
        if op == 0:
            item[key] = hostile_value(rng)
        elif op == 1:
            item.pop(key, None)
        elif op == 2 and key in item:
            item[rng.choice([f" {key}", f"{key} ", key.upper(), f"\t{key}\n"])] = item.pop(key)
        elif op == 3:
            item["data"] = mutate_data(rng)
        elif op == 4:
            event = item.get("event") if isinstance(item.get("event"), dict) else {}
            event[rng.choice(["type", "side", "cause", " type ", "extra"])] = rng.choice(
                [*DATA_CODES, "A", "B", "C", *HOSTILE_NUMBERS[:8], None, [], {}])
            item["event"] = event
        elif op == 5:
            item["date_time"] = rng.choice(HOSTILE_NUMBERS + HOSTILE_STRINGS[:6])
        else:
            item[rng.choice(HOSTILE_STRINGS[:12])] = hostile_value(rng)
    if rng.random() < 0.02:
        return hostile_value(rng)  # not an object at all
    return item


def byte_mutations(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(5)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            del data[pos:pos + rng.randrange(1, 40)]
        elif op == 2:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
        elif op == 3:
            data = data[:pos]  # truncation
        else:
            data[pos:pos] = data[pos:pos + rng.randrange(1, 200)] * rng.randrange(2, 5)
    return bytes(data)


def form_body(rng: random.Random, item: Any) -> bytes:
    from urllib.parse import urlencode  # noqa: PLC0415

    if not isinstance(item, dict):
        return b"=" * rng.randrange(1, 10)
    pairs = []
    for key, value in item.items():
        if isinstance(value, dict):
            pairs += [(f"event[{k}]", "" if v is None else str(v)) for k, v in value.items()]
        else:
            pairs.append((key, "" if value is None else str(value)))
    text = urlencode(pairs, errors="surrogatepass")
    return (byte_mutations(rng, text.encode("utf-8", "surrogatepass")) if rng.random() < 0.3
            else text.encode("utf-8", "surrogatepass"))


def auth(rng: random.Random) -> tuple[str, dict[str, str]]:
    """Path and headers: mostly the token in one of its four forms, sometimes a wrong one or none."""
    token = TOKEN if rng.random() < 0.9 else rng.choice(["", "wrong", TOKEN + "x", TOKEN[:-1], "%00", "A" * 500])
    form = rng.randrange(4) if token == TOKEN or rng.random() < 0.7 else 4
    if form == 0:
        return f"/notify/{token}", {}
    if form == 1:
        return f"/notify?token={token}", {}
    if form == 2:
        return "/notify", {"Authorization": f"Bearer {token}"}
    if form == 3:
        basic = base64.b64encode(f"mtt:{token}".encode()).decode()
        return "/notify", {"Authorization": f"Basic {basic}" if rng.random() < 0.98 else "Basic !!"}
    return "/notify", {}


#: Kinds of request and their shares of the run.
KINDS = {"json": 0.65, "bytes": 0.15, "form": 0.07, "encoded": 0.08, "method": 0.03, "raw": 0.02}
RAW = [
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n",
    b"POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /notify HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"POST /notify HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
]


def build(seed: int, index: int, kinds: dict[str, float] = KINDS) -> dict[str, Any]:
    """Request number `index`: method, path, headers, body, or raw bytes for the socket."""
    rng = random.Random(seed * 1_000_003 + index)
    kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
    if kind == "raw":
        return {"kind": kind, "raw": rng.choice(RAW)}
    path, headers = auth(rng)
    if rng.random() < 0.05:
        headers["X-Forwarded-For"] = rng.choice(["127.0.0.2", "10.9.9.9", "203.0.113.7", "garbage", "127.0.0.2, 198.51.100.1",
                                                 "::1", ", , ,", "1.2.3.4:80", "127.0.0.2 " * 50])
    if kind == "method":
        return {"kind": kind, "method": rng.choice(["GET", "PUT", "DELETE", "OPTIONS", "PATCH"]),
                "path": rng.choice(["/metrics", "/", "/-/ready", "/notify", "/../etc", "/notify/%2e%2e"]),
                "headers": headers, "body": b""}
    if kind == "json":
        value: Any = mutate_item(rng)
        if rng.random() < 0.15:
            value = [mutate_item(rng) for _ in range(rng.randrange(1, 60))]
        body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")  # a raw lone surrogate is not UTF-8: refused as such
    elif kind == "bytes":
        body = byte_mutations(rng, json.dumps(rng.choice(SEED)).encode())
    elif kind == "form":
        body = form_body(rng, mutate_item(rng))
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    else:  # encoded
        body = json.dumps(mutate_item(rng)).encode()
        encoding = rng.choice(["gzip", "deflate"])
        packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        body = byte_mutations(rng, packed) if rng.random() < 0.4 else packed
        if rng.random() < 0.1:
            body = BOMB  # a decompression bomb
            encoding = "gzip"
        headers["Content-Encoding"] = encoding
    headers.setdefault("Content-Type", rng.choice(CONTENT_TYPES))
    return {"kind": kind, "method": "POST", "path": path, "headers": headers, "body": body}


async def send_raw(port: int, raw: bytes) -> str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError):
        return "connect-error"
    try:
        writer.write(raw)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 2)
        parts = line.split()
        return parts[1].decode() if len(parts) > 1 and parts[1].isdigit() else "closed"
    except (OSError, TimeoutError):
        return "closed"
    finally:
        writer.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("mtt_")}


async def run(args: argparse.Namespace, exporter: Exporter) -> dict[str, Any]:
    pid = exporter.process.pid
    base = exporter.base
    statuses: Counter[str] = Counter()
    rss: list[tuple[int, float]] = [(0, rss_mb(pid))]
    start = time.monotonic()
    deadline = start + args.seconds
    next_index = 0
    warm = max(1, args.requests // 10)
    rss_warm = None
    timeout = aiohttp.ClientTimeout(total=30)

    # idle connections dropped before the exporter's keep-alive (--read-timeout) ends, as a proxy must
    connector = aiohttp.TCPConnector(keepalive_timeout=2)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False, connector=connector) as session:
        async def worker() -> None:
            nonlocal next_index, rss_warm
            while next_index < args.requests and time.monotonic() < deadline:
                index = next_index
                next_index += 1
                request = build(args.seed, index, args.kinds)
                if "raw" in request:
                    result = await send_raw(exporter.port, request["raw"])
                else:
                    try:
                        async with session.request(request["method"], base + request["path"], data=request["body"],
                                                   headers=request["headers"], skip_auto_headers=["Content-Type"]) as response:
                            await response.read()
                            result = str(response.status)
                    except (aiohttp.ClientError, TimeoutError) as error:
                        result = type(error).__name__
                statuses[result] += 1
                if not result.isdigit() and "raw" not in request and args.show_errors:
                    print(f"{result} at request {index}: {str(request)[:300]}", file=sys.stderr)
                if result.startswith("5"):
                    print(f"5xx at request {index}: {request}"[:2000], file=sys.stderr)
                if index % 5000 == 0 and index:
                    rss.append((index, rss_mb(pid)))
                if index == warm:
                    rss_warm = rss_mb(pid)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    seconds = time.monotonic() - start
    rss.append((next_index, rss_mb(pid)))
    return {"statuses": statuses, "seconds": seconds, "sent": sum(statuses.values()), "rss": rss,
            "rss_after_warmup_mb": rss_warm if rss_warm is not None else rss[0][1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=900, help="stop after this long even if requests remain")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rss-slack", type=float, default=20, help="MB the RSS may grow after the warm-up")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--smoke", action="store_true", help="2,000 requests, at most 30 s")
    parser.add_argument("--show-errors", action="store_true", help="print each request that got a transport error")
    parser.add_argument("--only", help=f"comma-separated kinds of request, of {','.join(KINDS)} (default: all)")
    args = parser.parse_args(argv)
    args.kinds = {k: KINDS[k] for k in args.only.split(",")} if args.only else KINDS
    if args.smoke:
        args.requests, args.seconds = min(args.requests, 2000), min(args.seconds, 30)

    workdir = Path(tempfile.mkdtemp(prefix="mtt-fuzz-"))
    exporter = Exporter(
        workdir, "--token", TOKEN, "--allow-cidr", "127.0.0.0/8", "--trusted-proxy", "127.0.0.1",
        "--max-body-bytes", "65536", "--max-batch-items", "50", "--max-calls", "2000", "--read-timeout", "5",
        "--call-end-grace", "2", "--call-ttl", "60", "--state-file", str(workdir / "state.json"),
    ).start()
    try:
        before = exporter.metrics()
        result = asyncio.run(run(args, exporter))
        healthy = exporter.request("GET", "/-/healthy")[0] == 200
        openmetrics = exporter.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})[0]
        after = exporter.metrics()
    finally:
        code = exporter.stop()
    log = exporter.log()
    new_series = sorted(series(after) - series(before))
    statuses = result["statuses"]
    rejected = {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in after.splitlines()
                if line.startswith("mtt_notifications_rejected_total{")}
    accepted = sum(float(line.rsplit(" ", 1)[1]) for line in after.splitlines() if line.startswith("mtt_notifications_total{"))
    rss_end = result["rss"][-1][1]
    checks = {
        "no 5xx": not any(s.startswith("5") for s in statuses),
        "healthy at the end": healthy,
        "OpenMetrics scrape 200 (exemplars encode)": openmetrics == 200,
        "clean exit (state saved)": code == 0 and "state saved" in log,
        "no new series": not new_series,
        "no errors logged": " ERROR " not in log and "Traceback" not in log,
        "RSS bounded": rss_end <= result["rss_after_warmup_mb"] + args.rss_slack,
    }
    summary = {
        "requests": result["sent"], "seconds": round(result["seconds"], 1),
        "rate_per_s": round(result["sent"] / result["seconds"]), "seed": args.seed,
        "statuses": dict(sorted(statuses.items())), "notifications_accepted": accepted, "rejected": rejected,
        "rss_mb": {"start": round(result["rss"][0][1], 1), "after_warmup": round(result["rss_after_warmup_mb"], 1),
                   "peak": round(max(r for _, r in result["rss"]), 1), "end": round(rss_end, 1),
                   "by_request": [[i, round(r, 1)] for i, r in result["rss"]]},
        "new_series": new_series[:20], "checks": checks, "passed": all(checks.values()),
    }
    print(markdown(summary))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    if not summary["passed"]:
        print(f"exporter log: {exporter.log_path}", file=sys.stderr)
    return 0 if summary["passed"] else 1


def markdown(s: dict[str, Any]) -> str:
    lines = [
        f"Fuzz run: {s['requests']:,} requests in {s['seconds']} s ({s['rate_per_s']:,}/s), seed {s['seed']}",
        "",
        "| answer | count |", "|---|---|",
        *[f"| {k} | {v:,} |" for k, v in s["statuses"].items()],
        "",
        f"Notifications accepted: {s['notifications_accepted']:,.0f}; refused by reason: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in s["rejected"].items() if v),
        f"RSS MB: start {s['rss_mb']['start']}, after warm-up {s['rss_mb']['after_warmup']}, "
        f"peak {s['rss_mb']['peak']}, end {s['rss_mb']['end']}",
        "",
        *[f"- [{'x' if ok else ' '}] {name}" for name, ok in s["checks"].items()],
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
