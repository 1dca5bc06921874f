"""Logging setup: text or JSON lines on stderr; token masking and rate-limited refusal lines."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from urllib.parse import quote

#: Attributes a LogRecord always has; anything else came in `extra=` and is printed.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        text = super().format(record)
        return f"{text} {extras}" if extras else text


def setup(level: str, fmt: str) -> None:
    """Configure the root logger once, for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# --- secrets ------------------------------------------------------------------------------

#: Where a token can sit in a request line or a path: a path segment after "notify" (any case,
#: doubled slashes), a `token=` query value, an Authorization header value.
_SECRET_PLACES = re.compile(
    r"(?i)(/notify/+)[^/?#\s\"']+|((?:^|[?&;])token=)[^&#\s\"']*|((?:bearer|basic)\s+)[^\s\"',]+"
)


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every place a token may sit replaced by <token>, and any of `secrets`
    (as given or %-encoded) wherever else it appears; for logs and echoed messages."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<token>").replace(quote(secret, safe=""), "<token>")
    text = _SECRET_PLACES.sub(lambda m: (m[1] or m[2] or m[3]) + "<token>", text)
    return text.encode("utf-8", "backslashreplace").decode()  # a path may carry undecodable bytes


# --- refusals -----------------------------------------------------------------------------

#: How often the refusals of an interval are summed up in one line.
SUMMARY_SECONDS = 10.0
#: Samples kept per interval, and their length.
SUMMARY_SAMPLES = 3
SAMPLE_CHARS = 160


class RefusalLog:
    """Refusals logged as a rate-limited summary: the first refusal after a quiet interval at
    once (someone debugging a sender sees it), the rest as counts by reason with a few samples
    once per interval. However many requests are refused, at most two lines of bounded size
    (about 1 kB) are written per interval: the log never amplifies what an attacker sends."""

    def __init__(self, logger: logging.Logger, interval: float = SUMMARY_SECONDS) -> None:
        self.logger = logger
        self.interval = interval
        self.counts: dict[str, int] = {}
        self.samples: list[str] = []
        self.quiet_until = 0.0

    def add(self, now: float, reason: str, peer: str, message: str, count: int = 1) -> None:
        """Note `count` refusals for `reason`; `now` is a monotonic time."""
        if now >= self.quiet_until and not self.counts:
            self.quiet_until = now + self.interval
            self.logger.info("rejected request",
                             extra={"reason": reason, "peer": peer, "count": count, "error": message[:SAMPLE_CHARS]})
            return
        sample = f"{peer} {reason}: {message}"[:SAMPLE_CHARS]
        self.counts[reason] = self.counts.get(reason, 0) + count
        if len(self.samples) < SUMMARY_SAMPLES:
            self.samples.append(sample)

    def flush(self, now: float, force: bool = False) -> None:
        """Write the summary of the interval when it is over (or `force`d, at shutdown)."""
        if not self.counts or (now < self.quiet_until and not force):
            return
        self.logger.info(
            "rejected requests (summary)",
            extra={"seconds": self.interval, "counts": dict(sorted(self.counts.items())), "samples": self.samples},
        )
        self.counts, self.samples = {}, []
        self.quiet_until = now + self.interval


class RateLimitedLog:
    """One line per interval for a repeating failure, with how often it happened since."""

    def __init__(self, logger: logging.Logger, interval: float = SUMMARY_SECONDS) -> None:
        self.logger = logger
        self.interval = interval
        self.next = 0.0
        self.suppressed = 0

    def error(self, now: float, message: str, exc_info: bool = False, **extra: object) -> None:
        """Log `message` (with the exception being handled if `exc_info`) unless one was logged
        less than an interval ago; `now` is a monotonic time."""
        if now < self.next:
            self.suppressed += 1
            return
        self.logger.error(message, exc_info=exc_info, extra={**extra, "repeated": self.suppressed})
        self.next, self.suppressed = now + self.interval, 0
