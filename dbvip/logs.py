"""Logging that never blocks the loop: records go through a queue to a thread.

Plain text by default, JSON lines with ``log_format = "json"``. A decision's
reason and facts travel as record attributes so JSON lines carry them as
fields, not only inside the message.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, TextIO


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for extra in ("reason", "facts", "action", "cause"):
            if hasattr(record, extra):
                line[extra] = getattr(record, extra)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup(level: str, fmt: str, stream: TextIO = sys.stderr) -> logging.handlers.QueueListener:
    """Route the ``dbvip`` logger through a queue; returns the started listener
    (stop it at exit to flush)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler, respect_handler_level=False)
    logger = logging.getLogger("dbvip")
    logger.handlers[:] = [logging.handlers.QueueHandler(records)]
    logger.setLevel(level.upper())
    logger.propagate = False
    listener.start()
    return listener
