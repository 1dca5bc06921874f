"""HTTP side of the traffic tools: post deliveries on schedule, scrape /metrics; `mtt-exporter replay`.

`mtt-exporter replay FILE... [--url URL] [--speed N | --as-fast-as-possible]` re-posts bodies
recorded with `--record` (give rotated files oldest first: rec.jsonl.2 rec.jsonl.1 rec.jsonl),
keeping their spacing in time divided by N; a gap longer than MAX_GAP_SECONDS (or going
back in time) is shortened to it (or to none), so no line can make replay sleep for ever. A
line that is not a recorded body (torn by a full disk, damaged, hostile) is skipped and
counted; a file with no recorded body at all is refused. A body that cannot be sent counts
as a failure under its error's name, never ends the replay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .record import read_records
from .simulate import Delivery

DEFAULT_URL = "http://127.0.0.1:9888/notify"
#: Longest pause between two recorded bodies that replay keeps (before --speed).
MAX_GAP_SECONDS = 3600.0
TOKEN_ENV = "MTT_EXPORTER_TOKEN"
#: What a refusal most likely means for the person running the tool.
STATUS_HINTS = {
    "400": "bodies refused as invalid (a recording holds the rejected bodies too)",
    "401": f"wrong or missing token: give --token or ${TOKEN_ENV}",
    "403": "this address is outside the exporter's --allow-cidr",
    "404": "no such path: --url should end in /notify",
    "405": "wrong method or path: --url should end in /notify",
    "408": "the exporter's --read-timeout ran out",
    "413": "over the exporter's --max-body-bytes or --max-batch-items",
    "429": "the exporter is overloaded (--max-concurrent-requests): lower --concurrency",
}


@dataclass
class SendStats:
    """What happened to the posted deliveries."""

    #: (kind, HTTP status or error name) -> count
    results: Counter[tuple[str, str]] = field(default_factory=Counter)
    sent: int = 0
    seconds: float = 0.0
    #: last call index whose first delivery went out (simulate's progress)
    calls_started: int = 0

    def failures(self, expected: Callable[[str], int] | None = None) -> int:
        """Deliveries with a transport error, a 5xx, or (given `expected`) another status than expected."""
        bad = 0
        for (kind, status), count in self.results.items():
            if not status.isdigit() or status.startswith("5") or (expected and int(status) != expected(kind)):
                bad += count
        return bad

    def refusals(self) -> Counter[str]:
        """Deliveries answered 4xx, by status."""
        found: Counter[str] = Counter()
        for (_, status), count in self.results.items():
            if status.startswith("4"):
                found[status] += count
        return found

    def all_refused(self) -> bool:
        """Something was sent and nothing got a 2xx."""
        return self.sent > 0 and not any(s.startswith("2") for _, s in self.results)

    def refusal_lines(self) -> list[str]:
        """One line per refusal status, most frequent first: count and what it likely means."""
        return [f"{count} answered {status}: {STATUS_HINTS.get(status, 'refused')}"
                for status, count in self.refusals().most_common()]

    def table(self, title: str) -> Table:
        table = Table(title=title)
        for column in ("kind", "answer", "count"):
            table.add_column(column, justify="right" if column == "count" else "left")
        for (kind, status), count in sorted(self.results.items()):
            table.add_row(kind, status, str(count))
        rate = self.sent / self.seconds if self.seconds else 0.0
        table.caption = f"{self.sent} requests in {self.seconds:.1f} s ({rate:.0f}/s)"
        return table


def auth_headers(token: str | None) -> dict[str, str]:
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    return {"Authorization": f"Bearer {token}"} if token else {}


#: Most of an answer to a POST read: the exporter's are a few hundred bytes; a hostile or
#: misconfigured server's are cut off here (x --concurrency in flight).
MAX_RESPONSE_BYTES = 64 << 10
#: Largest /metrics exposition read for the final summary.
MAX_SCRAPE_BYTES = 64 << 20


async def post_all(
    deliveries: Iterable[Delivery],
    url: str,
    *,
    speed: float | None = 1.0,
    concurrency: int = 32,
    headers: dict[str, str] | None = None,
    on_progress: Callable[[SendStats], None] | None = None,
) -> SendStats:
    """POST each delivery at `at / speed` seconds after the start (`speed=None`: at once), at most `concurrency` in flight."""
    stats = SendStats()
    limit = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def post(d: Delivery) -> None:
            try:
                async with session.post(url, data=d.payload(), headers={"Content-Type": d.content_type}) as response:
                    # the answer is only counted: read at most MAX_RESPONSE_BYTES of it, then drop the connection
                    await response.content.read(MAX_RESPONSE_BYTES)
                    if not response.content.at_eof():
                        response.close()
                    result = str(response.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                result = type(error).__name__
            except Exception as error:  # noqa: BLE001 - a delivery aiohttp cannot send: count it, go on
                result = type(error).__name__
            finally:
                limit.release()
            stats.results[(d.kind, result)] += 1

        start = loop.time()
        last_progress = 0.0
        tasks: set[asyncio.Task[None]] = set()
        for d in deliveries:
            if speed is not None:
                delay = start + d.at / speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await limit.acquire()
            task = asyncio.create_task(post(d))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            stats.sent += 1
            stats.calls_started = max(stats.calls_started, d.call + 1)
            now = loop.time()
            if on_progress is not None and now - last_progress > 0.1:
                stats.seconds, last_progress = now - start, now
                on_progress(stats)
        if tasks:
            await asyncio.gather(*tasks)
        stats.seconds = loop.time() - start
        if on_progress is not None:
            on_progress(stats)
    return stats


async def scrape(url: str) -> str:
    """The Prometheus text exposition at `url`."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.get(url, headers={"Accept": "text/plain"}) as response:
            response.raise_for_status()
            chunks, total = [], 0
            while chunk := await response.content.read(1 << 20):  # bounded: MAX_SCRAPE_BYTES in all
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_SCRAPE_BYTES:
                    raise aiohttp.ClientPayloadError(f"{url}: more than {MAX_SCRAPE_BYTES} bytes")
            return b"".join(chunks).decode(response.get_encoding(), errors="replace")


def metrics_url_for(notify_url: str) -> str:
    """/metrics on the same host and port as the notify URL."""
    return urljoin(notify_url, "/metrics")


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    )


def _replayed(paths: list[Path], skipped: list[str], shortened: list[float] | None = None) -> Iterable[Delivery]:
    """The recorded bodies as deliveries; lines that are not a recorded body go to `skipped`.

    Each body keeps its gap to the one before, at most MAX_GAP_SECONDS (the gaps cut go to
    `shortened`); a gap back in time (files out of order, a clock step) counts as none.
    """
    at, previous = 0.0, None
    for receipt, body, content_type in read_records(paths, skipped.append):
        if previous is not None:
            gap = receipt - previous
            if gap > MAX_GAP_SECONDS and shortened is not None:
                shortened.append(gap)
            at += min(max(gap, 0.0), MAX_GAP_SECONDS)
        previous = receipt
        yield Delivery(at, body, "recorded", content_type=content_type)


def main(argv: list[str] | None = None) -> None:
    """`mtt-exporter replay`."""
    parser = argparse.ArgumentParser(
        prog="mtt-exporter replay",
        description="Re-post the bodies an exporter recorded with --record FILE to an exporter's /notify, "
        "keeping their spacing in time (divided by --speed). Exit status 1 when a body failed "
        "(transport error or 5xx) or when every body was refused; refusals are summarised by status.",
        epilog=f"example: {TOKEN_ENV}=s3cret mtt-exporter replay rec.jsonl.1 rec.jsonl --speed 10",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="recorded JSON lines, oldest first")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"notify URL (default {DEFAULT_URL})")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="N", help="replay N times faster than recorded (default 1)")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="ignore the recorded spacing")
    parser.add_argument("--concurrency", type=int, default=16, metavar="N", help="requests in flight at most (default 16)")
    parser.add_argument("--token", metavar="SECRET", help=f"sent as Bearer token (default: ${TOKEN_ENV}, which keeps it out of `ps`)")
    args = parser.parse_args(argv)
    if args.speed <= 0:
        parser.error("--speed must be > 0")
    for path in args.files:
        if not path.is_file():
            parser.error(f"no such file: {path}")
    console = Console(stderr=True)
    skipped: list[str] = []
    shortened: list[float] = []
    with progress_bar(console) as progress:
        task = progress.add_task("replay", total=None, unit="bodies", info="")
        try:
            stats = asyncio.run(post_all(
                _replayed(args.files, skipped, shortened), args.url, speed=None if args.as_fast_as_possible else args.speed,
                concurrency=args.concurrency, headers=auth_headers(args.token),
                on_progress=lambda s: progress.update(task, completed=s.sent),
            ))
        except ValueError as error:
            console.print(f"mtt-exporter replay: {error}")
            raise SystemExit(2) from None
    if shortened:
        console.print(f"{len(shortened)} gaps longer than {MAX_GAP_SECONDS:g} s shortened to it (longest {max(shortened):.0f} s)")
    if skipped:
        console.print(f"{len(skipped)} lines skipped, not a recorded body (first: {skipped[0]})", markup=False, highlight=False)
        if not stats.sent:
            console.print("mtt-exporter replay: no recorded body in the files")
            raise SystemExit(2)
    Console().print(stats.table("replayed"))
    for line in stats.refusal_lines():
        console.print(line, markup=False, highlight=False)
    if stats.failures():
        console.print(f"{stats.failures()} bodies failed (transport error or 5xx)")
        raise SystemExit(1)
    if stats.all_refused():
        console.print("every body was refused: nothing was replayed")
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
