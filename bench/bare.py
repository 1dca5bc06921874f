"""The ceiling of the stack: an aiohttp handler that reads the body and answers 200 with JSON.

    python bench/bare.py HOST:PORT [uvloop]
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def handle_notify(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "ok"})


async def handle_ready(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


def main() -> None:
    host, _, port = sys.argv[1].rpartition(":")
    app = web.Application()
    app.router.add_post("/notify", handle_notify)
    app.router.add_get("/-/ready", handle_ready)
    loop = None
    if sys.argv[2:] == ["uvloop"]:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host=host, port=int(port), access_log=None, print=None, loop=loop or asyncio.new_event_loop())


if __name__ == "__main__":
    main()
