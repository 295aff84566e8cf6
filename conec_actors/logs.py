"""Logging for long-running commands: one JSON object per line
(`JsonFormatter`), a filter that rate-limits repeated warnings
(`RateLimitFilter`), and `setup_logging`, which the command line calls.

Everything here is the standard library's `logging`: a record's ``extra``
fields (`EXTRA_FIELDS`) become JSON keys, so a log call such as
``log.info("refused %s", cid, extra={"reason": "duplicate_id", ...})`` is
both readable text and a structured event.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

__all__ = [
    "EXTRA_FIELDS",
    "JsonFormatter",
    "LogWriter",
    "RateLimitFilter",
    "TextFormatter",
    "setup_logging",
]

#: ``extra`` fields a JSON line carries when a record has them.
EXTRA_FIELDS: tuple[str, ...] = ("reason", "address", "client_id", "kind", "pid")

#: Seconds during which repeats of one warning are counted rather than logged.
DEFAULT_WINDOW = 10.0

#: Distinct warnings remembered by a `RateLimitFilter` before it forgets those
#: whose window has passed (messages formatted before logging are all distinct).
MAX_KEYS = 1024

#: The text format the command line has always used.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

LogFormat = Literal["text", "json"]


def _json_value(value: Any) -> Any:
    """`value` as JSON can carry it: a ``(host, port)`` address becomes
    ``"host:port"`` (as ``/clients`` writes it), anything else not plain
    becomes its ``str``."""
    if isinstance(value, tuple) and len(value) >= 2 and isinstance(value[0], str) \
            and isinstance(value[1], int):
        host = value[0]
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"{host}:{value[1]}"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: ``time`` (ISO 8601, UTC, in
    milliseconds), ``level``, ``logger``, ``message``, then those of
    `EXTRA_FIELDS` the record carries, ``suppressed`` (set by
    `RateLimitFilter`), ``exception`` and ``stack`` when present."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for key in EXTRA_FIELDS:
            if fields.get(key) is not None:
                out[key] = _json_value(fields[key])
        suppressed = fields.get("suppressed")
        if suppressed:
            out["suppressed"] = suppressed
        if record.exc_info:
            # Cached like logging.Formatter does, for the other handlers.
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # json.dumps escapes newlines: one record is always one line.
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The plain ``time LEVEL logger: message`` line, saying how many
    repeats `RateLimitFilter` dropped before this one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        suppressed = record.__dict__.get("suppressed")
        if suppressed:
            text += f" ({suppressed} similar suppressed)"
        return text


class _Seen:
    __slots__ = ("passed_at", "suppressed")

    def __init__(self, passed_at: float) -> None:
        self.passed_at = passed_at
        self.suppressed = 0


class RateLimitFilter(logging.Filter):
    """Lets the first of a repeated warning through, then drops the repeats
    for `window` seconds, counting them; the next one that passes after the
    window carries the count as the record's ``suppressed`` attribute.

    Records are "the same" when they come from the same logger, at the same
    level, with the same message template (``record.msg``, before its
    arguments are filled in), so a flood of refusals from many addresses is
    one line per window. Records below `level` always pass. `clock` gives
    the time in seconds (`time.monotonic` by default; tests pass their own).
    """

    def __init__(self, window: float = DEFAULT_WINDOW, *, level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if not window > 0:
            raise ValueError(f"window must be positive, got {window!r}")
        self.window = window
        self.level = level
        self._clock = clock
        self._seen: dict[tuple[str, int, str], _Seen] = {}
        # Handlers may be called from several threads; the table is shared.
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.passed_at < self.window:
                seen.suppressed += 1
                return False
            if seen is None:
                if len(self._seen) >= MAX_KEYS:
                    self._forget(now)
                self._seen[key] = _Seen(now)
                return True
            if seen.suppressed:
                record.suppressed = seen.suppressed
            seen.passed_at, seen.suppressed = now, 0
            return True

    def _forget(self, now: float) -> None:
        """Drop the entries whose window has passed (a count they hold is
        lost: nothing like them came since)."""
        for key in [k for k, s in self._seen.items() if now - s.passed_at >= self.window]:
            del self._seen[key]


class LogWriter(io.TextIOBase):
    """A text stream whose every line becomes a log record of `logger` at
    `level`: with ``--log-format json``, the command line's own messages on
    stderr are JSON lines too."""

    def __init__(self, logger: logging.Logger, level: int = logging.ERROR) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line:
                # The line is the template (no arguments: no % formatting), so
                # the rate limit only holds back a line said again.
                self._logger.log(self._level, line)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            line, self._partial = self._partial, ""
            self._logger.log(self._level, line)


def setup_logging(fmt: LogFormat = "text", level: int | str = logging.INFO, *,
                  stream: TextIO | None = None,
                  window: float = DEFAULT_WINDOW) -> logging.Handler:
    """Send every log record at `level` and above to `stream` (default
    stderr) as text or as JSON lines, with repeated warnings rate-limited
    (`RateLimitFilter`) and Python's warnings captured; replaces the root
    logger's handlers and returns the new one. aioquic's per-connection
    ``quic`` logger is kept at WARNING unless `level` is DEBUG."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RateLimitFilter(window))
    if isinstance(level, str):
        level = level.upper()
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Python's own warnings (``warnings.warn``) become records too: in JSON,
    # no line on stderr is anything but JSON.
    logging.captureWarnings(True)
    root_level = logging.getLogger().level
    logging.getLogger("quic").setLevel(
        logging.NOTSET if root_level <= logging.DEBUG else logging.WARNING)
    return handler
