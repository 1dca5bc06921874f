"""A TCP proxy on loopback that adds a round-trip time, or swallows everything (a blackhole).

The kernel here has no netem qdisc (`tc qdisc add ... netem` says "unknown"), so a slow or
blackholed network is emulated in user space: every chunk is passed on `rtt / 2` after it
arrived, in order, in each direction; bandwidth is not limited. In-process for the tests
(`async with DelayProxy(port, rtt) as proxy`), or its own process for the benchmarks:

    python -m tests.delay_proxy --target 6379 --rtt 0.2 [--listen 0]   # prints the port
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

#: Bytes read per chunk, and chunks queued per direction before reading pauses.
CHUNK = 65536
MAX_CHUNKS = 1024


class DelayProxy:
    """127.0.0.1:`port` -> 127.0.0.1:`target`, `rtt` seconds added to every round trip."""

    def __init__(self, target: int, rtt: float, listen: int = 0) -> None:
        self.target, self.rtt, self.listen = target, rtt, listen
        self.port = 0
        #: True: nothing is passed on any more, connections stay open (packets dropped)
        self.blackhole = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream = None
        try:
            if self.blackhole:
                while await reader.read(CHUNK):
                    pass
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
            await asyncio.gather(self._pump(reader, upstream), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a side closed, or the proxy stops
        finally:
            self._tasks.discard(task)
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Pass on what `source` sends, each chunk rtt/2 after it arrived."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_CHUNKS)

        async def send() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    break
                await asyncio.sleep(due - loop.time())
                if not self.blackhole:
                    sink.write(data)
                    await sink.drain()
            if not self.blackhole:
                sink.close()

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await source.read(CHUNK)
                await chunks.put((loop.time() + self.rtt / 2, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender


async def _serve(args: argparse.Namespace) -> None:
    async with DelayProxy(args.target, args.rtt, args.listen) as proxy:
        print(proxy.port, flush=True)
        await asyncio.Event().wait()  # until terminated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, required=True, help="port on 127.0.0.1 to forward to")
    parser.add_argument("--rtt", type=float, required=True, help="seconds added to every round trip")
    parser.add_argument("--listen", type=int, default=0, help="port to listen on (0: any free one, printed)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
