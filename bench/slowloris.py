"""Slowloris on the body against a real exporter: N connections trickle a body a byte a second
while ordinary notifications are posted one after the other; prints their statuses and latency.

    .venv/bin/python bench/slowloris.py [--slow 256] [--posts 20]

Issue #9 item 3: before the fix every ordinary POST got 429 for 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

import aiohttp

PORT = 18911


async def main(slow_count: int, posts: int) -> None:
    process = subprocess.Popen([sys.executable, "-m", "mtt_exporter", "--listen", f"127.0.0.1:{PORT}", "--log-level", "warning"])
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # bounded wait for ready
                try:
                    async with session.get(f"http://127.0.0.1:{PORT}/-/ready") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            slow = []
            for _ in range(slow_count):
                _, writer = await asyncio.open_connection("127.0.0.1", PORT)
                writer.write(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
                slow.append(writer)

            async def trickle() -> None:
                for _ in range(5):
                    await asyncio.sleep(1)
                    for writer in slow:
                        writer.write(b" ")

            trickling = asyncio.create_task(trickle())
            await asyncio.sleep(1.5)
            latencies, statuses = [], []
            now = int(time.time())
            for i in range(posts):
                item = {"h323_conf_id": f"C{i}", "event": {"type": "o"}, "date_time": now, "redirect_number": "79000000001"}
                start = time.perf_counter()
                async with session.post(f"http://127.0.0.1:{PORT}/notify", json=item) as response:
                    statuses.append(response.status)
                latencies.append(time.perf_counter() - start)
            await trickling
            latencies.sort()
            print(f"{slow_count} slow bodies; {posts} posts: statuses {sorted(set(statuses))}, "
                  f"median {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
            for writer in slow:
                writer.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=256)
    parser.add_argument("--posts", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.slow, args.posts))
