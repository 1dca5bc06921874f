"""Recording of received bodies as JSON lines (`--record`), and reading them back for replay.

One line per body: {"time": receipt Unix seconds, "content_type": ..., "body": text} or
"body_b64" instead of "body" when the bytes are not UTF-8. Bodies contain phone numbers:
the files are personal data.

Writes are buffered and flushed by size and by the server's one-second ticker, so the
event loop makes one write system call per RECORD_FLUSH_BYTES or per second, not one per
request; logging's RotatingFileHandler would flush every record.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from json.encoder import encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]

log = logging.getLogger("mtt_exporter")


def _json_string(text: str) -> bytes:
    return encode_basestring(text).encode()  # text decoded from UTF-8: no lone surrogates


#: Buffered bytes that trigger a write.
RECORD_FLUSH_BYTES = 256 * 1024


class Recorder:
    """Appends bodies to `path`, rotating to path.1 .. path.<keep> past `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        os.chmod(self.path, 0o600)  # personal data
        self._size = self._file.tell()

    def write(self, time: float, body: bytes, content_type: str) -> None:
        """Queue one body received at `time`."""
        try:
            field, value = b"body", _json_string(body.decode("utf-8"))
        except UnicodeDecodeError:
            field, value = b"body_b64", b'"' + base64.b64encode(body) + b'"'
        # one JSON object formatted directly, cheaper than json.dumps of a dict; the header as
        # ASCII escapes, since aiohttp keeps undecodable header bytes as surrogates
        data = b'{"time": %.6f, "content_type": %s, "%s": %s}\n' % (
            time, encode_basestring_ascii(content_type).encode(), field, value)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= RECORD_FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, rotating first when the file would pass `max_bytes`."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        try:
            if self._file.closed:  # a rotation failed half-way
                self._open()
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(data)
            self._size += len(data)
        except OSError as error:  # e.g. disk full: lose the recording, never the notification
            log.warning("cannot write --record file, %d bytes dropped: %s", len(data), error)

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.keep > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._open()

    def close(self) -> None:
        self.flush()
        if not self._file.closed:
            self._file.close()


def read_records(paths: Iterable[Path]) -> Iterator[tuple[float, bytes, str]]:
    """(receipt time, body, content type) of every line of the files, in the order given."""
    for path in paths:
        with open(path, "rb") as lines:
            for number, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                    body = line["body"].encode() if "body" in line else base64.b64decode(line["body_b64"])
                    yield float(line["time"]), body, line.get("content_type") or "application/json"
                except (ValueError, KeyError, TypeError) as error:
                    raise ValueError(f"{path}:{number}: not a recorded body ({error})") from None
