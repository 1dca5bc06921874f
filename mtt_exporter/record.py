"""Recording of received bodies as JSON lines (`--record`), and reading them back for replay.

One line per body: {"time": receipt Unix seconds, "content_type": ..., "body": text} or
"body_b64" instead of "body" when the bytes are not UTF-8. Bodies contain phone numbers:
the files are personal data.

Writes are buffered and flushed by size and by the server's one-second ticker, so the
event loop makes one write system call per RECORD_FLUSH_BYTES or per second, not one per
request; logging's RotatingFileHandler would flush every record.

The file must be a regular file: a symlink, FIFO or device at the path is refused at start
(opened without following links and without blocking). A file that ends in a partial line
(a kill mid-write) is ended with a newline before the first new line, and every flush takes
the file's real size first, so a truncation by another process (logrotate's copytruncate)
never makes a failed write "truncate back" past the end. One recorder per path: an exclusive
lock (`.<name>.lock`, filelock.py) is held from start to close; a second exporter recording
to the same path refuses to start.

Reading back validates every field of every line (a time within plausible bounds, a
printable content type, a body) and skips and reports a line that fails, whatever the
failure.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from json.encoder import encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]

from . import filelock
from .clock import seconds

log = logging.getLogger("mtt_exporter")


def _json_string(text: str) -> bytes:
    return encode_basestring(text).encode()  # text decoded from UTF-8: no lone surrogates


#: Buffered bytes that trigger a write.
RECORD_FLUSH_BYTES = 256 * 1024
#: Longest line read back (a 1 MiB body escaped takes at most 6 MiB); longer ones are skipped unread.
MAX_LINE_BYTES = 64 << 20
#: Longest content type read back; a recorded one is a MIME type.
MAX_CONTENT_TYPE = 255
DEFAULT_CONTENT_TYPE = "application/json"


class _ShortWrite(OSError):
    """A write that stopped part-way (disk full, file size limit); `lines`: whole lines that made it."""

    def __init__(self, error: OSError, lines: int) -> None:
        super().__init__(error.errno, error.strerror or str(error))
        self.lines = lines


class Recorder:
    """Appends bodies to `path`, rotating to path.1 .. path.<keep> before a file would pass `max_bytes`.

    Files hold whole lines only: a write cut short (disk full) is truncated back to its
    last complete line, and the lines that did not fit are dropped, counted in the log
    (one line when writing fails, one when it works again). `max_bytes` is a hard limit:
    a body whose line alone is larger is not recorded.
    """

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._buffer: list[bytes] = []
        self._buffered = 0
        #: the file ends in a partial line (found so at open or after a truncation by another
        #: process, or a failed write could not be truncated back): the next write ends it first
        self._torn = False
        #: lines dropped since writing last failed; None while writing works
        self._dropped: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()  # first: a path that is no regular file is refused before anything is created
        #: one recorder per path (filelock.py): two would rotate each other's files out of order
        try:
            self._lock_fd: int | None = filelock.acquire(self.path, "--record")
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        """Open (or create) the file: a regular file only, never through a symlink, never blocking on a FIFO."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, f"--record {self.path} is a symlink: it is written only as a regular file") from None
            if error.errno == errno.EISDIR:
                raise OSError(errno.EISDIR, f"--record {self.path} is not a regular file but a directory") from None
            raise
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise OSError(errno.EINVAL, f"--record {self.path} is not a regular file")
            os.set_blocking(fd, True)
            os.fchmod(fd, 0o600)  # personal data; the descriptor, not the path: no link is followed
            self._file = os.fdopen(fd, "ab", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        self._size = status.st_size
        self._torn = self._ends_torn(status.st_size)

    def _ends_torn(self, size: int) -> bool:
        """Whether the file of `size` bytes ends in a partial line (a kill or power loss mid-write)."""
        return size > 0 and os.pread(self._file.fileno(), 1, size - 1) != b"\n"

    def _resync(self) -> None:
        """Take the file's real size: another process may have truncated it (logrotate copytruncate)."""
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size != self._size:
                self._size, self._torn = size, self._ends_torn(size)
        except (OSError, ValueError):  # keep the own count; the write that follows reports the fault
            pass

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
        """Write what is buffered, rotating whenever the next line would take the file past `max_bytes`."""
        if not self._buffer:
            return
        lines = self._buffer
        self._buffer, self._buffered = [], 0
        written = oversize = 0
        try:
            if self._file.closed:  # a rotation failed half-way
                self._open()
            self._resync()
            chunk: list[bytes] = []
            size = self._size
            for line in lines:
                if len(line) > self.max_bytes:
                    oversize += 1
                    continue
                if size + len(line) > self.max_bytes:
                    self._append(chunk)
                    written += len(chunk)
                    chunk = []
                    self._rotate()
                    size = 0
                chunk.append(line)
                size += len(line)
            self._append(chunk)
            written += len(chunk)
        except OSError as error:  # e.g. disk full: lose the recording, never the notification
            if isinstance(error, _ShortWrite):
                written += error.lines
            self._failed(error, len(lines) - oversize - written)
        else:
            if self._dropped is not None:
                log.warning("--record file written again; %d bodies were not recorded meanwhile", self._dropped)
                self._dropped = None
        if oversize:
            log.warning("%d bodies not recorded: one line would be larger than --record-max-bytes %d", oversize, self.max_bytes)

    def _append(self, chunk: list[bytes]) -> None:
        """Write whole lines or none: on a short write, truncate back to the last complete line."""
        if not chunk:
            return
        data = b"".join(chunk)
        if self._torn:
            data = b"\n" + data  # ends the partial line: replay skips it, the next line is whole
        start, done = self._size, 0
        try:
            while done < len(data):
                count = self._file.write(data[done:])
                if not count:
                    raise OSError(errno.ENOSPC, "write made no progress")
                done += count
        except OSError as error:
            kept = data.rfind(b"\n", 0, done) + 1
            try:
                os.ftruncate(self._file.fileno(), start + kept)
            except (OSError, ValueError):  # the line stays torn; the next write ends it
                self._size, self._torn = start + done, done > kept or (self._torn and kept == 0)
            else:
                self._size, self._torn = start + kept, self._torn and kept == 0
            raise _ShortWrite(error, data.count(b"\n", 0, kept) - (data[:1] == b"\n" and kept > 0)) from None
        self._size += done
        self._torn = False

    def _failed(self, error: OSError, dropped: int) -> None:
        if self._dropped is None:
            self._dropped = 0
            log.warning("cannot write --record file, bodies are dropped until it can be written again: %s", error)
        self._dropped += dropped

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
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _record(raw: bytes) -> tuple[float, bytes, str]:
    """One line as (receipt time, body, content type); ValueError (or anything) when it is not a recorded body."""
    line = json.loads(raw)
    if not isinstance(line, dict):
        raise ValueError("not an object")
    receipt = seconds(line.get("time"))
    if "body" in line:
        if not isinstance(line["body"], str):
            raise ValueError("body: not a string")
        body = line["body"].encode()  # a lone surrogate raises UnicodeEncodeError
    else:
        if not isinstance(line.get("body_b64"), str):
            raise ValueError("neither body nor body_b64")
        body = base64.b64decode(line["body_b64"], validate=True)
    content_type = line.get("content_type") or DEFAULT_CONTENT_TYPE
    if not (isinstance(content_type, str) and len(content_type) <= MAX_CONTENT_TYPE and _header_safe(content_type)):
        raise ValueError("content_type: not a header value of at most 255 characters")
    return receipt, body, content_type


def _header_safe(text: str) -> bool:
    """No control character (CR, LF: a header injection), and encodable as aiohttp received it
    (bytes that were not UTF-8 kept as surrogate escapes)."""
    if any(char < " " or char == "\x7f" for char in text):
        return False
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def read_records(paths: Iterable[Path], on_skip: Callable[[str], None] | None = None) -> Iterator[tuple[float, bytes, str]]:
    """(receipt time, body, content type) of every line of the files, in the order given.

    A line that is not a recorded body (torn by a full disk, edited, hostile: any failure to
    parse or check it, and any line over MAX_LINE_BYTES) is skipped and passed to `on_skip`
    as "FILE:LINE: why"; without `on_skip` it raises ValueError.
    """
    for path in paths:
        with open(path, "rb") as lines:
            number = 0
            while raw := lines.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(raw) > MAX_LINE_BYTES:
                    while raw and not raw.endswith(b"\n"):  # skip the rest of the line unread
                        raw = lines.readline(MAX_LINE_BYTES)
                    why = f"longer than {MAX_LINE_BYTES} bytes"
                elif not raw.strip():
                    continue
                else:
                    try:
                        record = _record(raw)
                    except Exception as error:  # noqa: BLE001 - RecursionError, MemoryError, ... : a bad line, never the end
                        why = type(error).__name__
                    else:
                        yield record
                        continue
                where = f"{path}:{number}: not a recorded body ({why})"
                if on_skip is None:
                    raise ValueError(where)
                on_skip(where)
