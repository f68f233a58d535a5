"""The JSON-lines event stream between a running job and whoever watches it (the Slicer module, a script).

Writer: with `--events`, one JSON object per line on stdout, and always the same lines appended to
RUN_DIR/events.jsonl. Reader: incremental, never blocks, never parses free text, tolerates a partial last line.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

EVENT_TYPES = ("start", "progress", "checkpoint", "sample", "warning", "done", "error")  # warning: message, hint


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: send them as null so every line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _clean(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


class EventWriter:
    """Emits events to stdout (when `to_stdout`) and to `log_path` (when given). Quiet writers are allowed."""

    def __init__(self, log_path: str | os.PathLike | None = None, to_stdout: bool = False):
        self.log_path = Path(log_path) if log_path else None
        self.to_stdout = to_stdout
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def set_log_path(self, log_path: str | os.PathLike | None) -> None:
        self.log_path = Path(log_path) if log_path else None
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> dict:
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event!r}")
        if event == "start":  # the parent signals THIS process to stop (a launcher in between does not forward)
            fields.setdefault("pid", os.getpid())
        record = {"event": event, "time": round(time.time(), 3), **_clean(fields)}
        line = json.dumps(record, separators=(",", ":"))
        if self.to_stdout:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if self.log_path:
            try:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError as exc:  # the run folder vanished or the disk is full: the event still went to stdout,
                if event not in ("error", "done"):  # and a final report must not turn into a crash of its own
                    raise  # (a stopped evaluate has removed its half-written folder before it says "stopped")
                print(f"note: could not append the {event} event to {self.log_path} ({exc.strerror})", file=sys.stderr)
        return record


class EventReader:
    """Reads new complete lines from an events file or a growing text buffer; keeps a partial last line."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self._offset = 0
        self._pending = ""

    def feed(self, text: str) -> list[dict]:
        """Parse newly arrived text (e.g. a chunk of the child's stdout); returns the complete events in it."""
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        return [e for e in (parse_event_line(line) for line in lines) if e is not None]

    def poll(self) -> list[dict]:
        """Read what was appended to the file since the last call (never blocks; missing file = no events)."""
        if self.path is None or not self.path.exists():
            return []
        with open(self.path, "r", encoding="utf-8", errors="replace") as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        return self.feed(chunk)


def parse_event_line(line: str) -> dict | None:
    """One stdout/events.jsonl line -> event dict, or None for anything that is not an event object."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("event") not in EVENT_TYPES:
        return None
    return record


def read_events(path: str | os.PathLike) -> Iterator[dict]:
    """All events of a finished (or running) job's events.jsonl."""
    yield from EventReader(path).poll()
