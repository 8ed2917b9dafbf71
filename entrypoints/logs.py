"""Entry points: logging as the settings say — the level (THAW_LOG_LEVEL) and plain text or one JSON object per line
(THAW_LOG_JSON), on the root logger, so Thaw's own lines (the job lifecycle on `thaw.jobs`) and its libraries' go the
same way."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the fields passed with `extra=`
    (a job's id, item, duration, reason...) and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _ThawHandler(logging.StreamHandler):
    """The handler configure_logging installs: found and replaced when it is called again."""


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Set the root logger's level and its one Thaw handler (on stderr), which Python's warnings go through too.
    It replaces the plain stream handlers on the root (`logging.basicConfig`'s) and the one an earlier call installed,
    so no line is printed twice (the CLI's basicConfig, the API factory reached twice in a process)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ThawHandler) or type(h) is logging.StreamHandler]:
        root.removeHandler(handler)
    handler = _ThawHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(PLAIN_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python's warnings become log records too
    if json_lines:  # uvicorn's server and access lines too, where it serves the API (it gives them handlers of its own)
        for name in ("uvicorn", "uvicorn.access"):
            logging.getLogger(name).handlers = []
            logging.getLogger(name).propagate = True
