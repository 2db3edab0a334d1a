"""Logging: one line per event on stdout (journald-friendly), as text or JSON.

``RateLimitedLogger`` is for events a remote peer can trigger at will (protocol errors,
bad frames): it lets ``burst`` lines through per ``interval`` and then counts, and reports
how many it suppressed when the window ends, so an attacker cannot flood the journal.
It is logger-like, so it is also what picows gets as its (single, shared) logger.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, process, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "process": record.processName,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, fmt: str, process_name: str) -> None:
    """Configure the root logger of this process. Call again after fork with the child's
    process name; it replaces the handler rather than adding one."""
    import multiprocessing

    multiprocessing.current_process().name = process_name
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # picows logs every peer-caused protocol error at ERROR; it gets a RateLimitedLogger.
    logging.getLogger("picows").setLevel(logging.WARNING)


class RateLimitedLogger:
    """A logger-like object that lets at most ``burst`` records through per ``interval``
    seconds (across all callers) and logs the suppressed count when a window ends.

    Peer-caused events are demoted to ``level`` (INFO by default): they are not server
    errors."""

    def __init__(
        self, name: str, burst: int = 20, interval: float = 10.0, level: int = logging.INFO
    ) -> None:
        self._logger = logging.getLogger(name)
        self._burst = burst
        self._interval = interval
        self._level = level
        self._window_start = 0.0
        self._count = 0
        self.suppressed = 0

    def _allow(self) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self._interval:
            if self.suppressed:
                self._logger.log(self._level, "suppressed %d similar messages", self.suppressed)
            self._window_start = now
            self._count = 0
            self.suppressed = 0
        if self._count < self._burst:
            self._count += 1
            return True
        self.suppressed += 1
        return False

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        level = min(level, self._level)
        if self._logger.isEnabledFor(level) and self._allow():
            kwargs.pop("exc_info", None)  # no tracebacks for peer-caused events
            self._logger.log(level, msg, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:
        return self._logger.isEnabledFor(min(level, self._level))

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)
