"""Instructions per request under valgrind's callgrind: repeatable on a busy machine.

    .venv/bin/python bench/callgrind.py [--requests N] [--kinds bare,exporter] [--exporter-path DIR]
    .venv/bin/python bench/callgrind.py --smoke     # a few requests (the test suite does this)

Each server (bench/bare.py, or the exporter as bench/serve.py runs it) starts under
`valgrind --tool=callgrind`; after a warm-up its counters are zeroed (`callgrind_control -z`),
N notifications are posted over 8 keep-alive connections (the bodies of bench/run.py), and
the counters are dumped: instructions / N is what one request costs the server, start-up and
client excluded. Other load on the machine changes the time this takes, not the count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.append(str(ROOT))
sys.path.insert(0, str(BENCH))

from run import PY, exporter_env, free_port, get, write_bodies  # noqa: E402

CONNECTIONS = 8


async def post_all(port: int, bodies: list[bytes], connections: int = CONNECTIONS) -> int:
    """POST every body once, `connections` at a time; the number answered 200."""
    import aiohttp

    queue = list(reversed(bodies))
    ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        while queue:
            body = queue.pop()
            async with session.post(f"http://127.0.0.1:{port}/notify", data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
                ok += response.status == 200

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return ok


def instructions(kind: str, bodies: list[bytes], warmup: int, env: dict[str, str], loop: str,
                 out_dir: Path) -> dict[str, float]:
    port = free_port()
    listen = f"127.0.0.1:{port}"
    cmd = [PY, str(BENCH / "bare.py"), listen, loop] if kind == "bare" else \
        [PY, str(BENCH / "serve.py"), "--listen", listen] + (["--event-loop", loop] if loop != "asyncio" else [])
    out_file = out_dir / f"callgrind.{kind}.{loop}.out"
    process = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}.%p", *cmd],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while get(f"http://{listen}/-/ready", timeout=5)[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start under valgrind: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        asyncio.run(post_all(port, bodies[:warmup]))
        subprocess.run(["callgrind_control", "-z", str(process.pid)], check=True, capture_output=True)
        measured = bodies[warmup:]
        ok = asyncio.run(post_all(port, measured))
        subprocess.run(["callgrind_control", "-d", str(process.pid)], check=True, capture_output=True)
    finally:
        process.terminate()
        process.wait(120)
    dumps = sorted(out_dir.glob(f"{out_file.name}.{process.pid}.*"))  # the dump after zeroing
    totals = re.search(rb"^(?:summary|totals): (\d+)", dumps[-1].read_bytes(), re.M)
    if totals is None or ok != len(measured):
        raise RuntimeError(f"{kind}: {ok} of {len(measured)} answered 200, dump {dumps[-1]}")
    return {"requests": len(measured), "instructions_per_request": int(totals[1]) / len(measured)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--kinds", default="bare,exporter")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--exporter-path", type=Path, help="run this checkout's exporter package instead")
    parser.add_argument("--keep", type=Path, help="keep the callgrind dumps here (for callgrind_annotate)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    a = parser.parse_args()
    if a.smoke:
        a.requests, a.warmup = 40, 10
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (scripts/system-deps.sh installs it)")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "bodies.jsonl"
        write_bodies(body_file, max(50, (a.requests + a.warmup) // 6 + 1))
        bodies = body_file.read_bytes().splitlines()[: a.warmup + a.requests]
        out_dir = a.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind in a.kinds.split(","):
            env = exporter_env(a) if kind == "exporter" else dict(os.environ)
            results[kind] = instructions(kind, bodies, a.warmup, env, a.loop, out_dir)
            print(f"{kind}: {results[kind]['instructions_per_request']:,.0f} instructions per request", flush=True)
    if "bare" in results and "exporter" in results:
        results["ratio"] = {"bare_over_exporter": results["bare"]["instructions_per_request"]
                            / results["exporter"]["instructions_per_request"]}
        print(f"ratio bare / exporter: {results['ratio']['bare_over_exporter']:.2f}")
    if a.out:
        a.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
