"""How every engine job (train, generate, evaluate, utility, ...) learns that it should stop: SIGINT/SIGTERM
(SIGBREAK on Windows), or the stop-request file in its output folder (runfolder.STOP_REQUEST), which the parent
writes (jobs/runner.py) and which needs no signal. The file is the portable path: a GUI parent on Windows cannot
always send CTRL_BREAK to a child started without a console, and a launcher between parent and engine (PythonSlicer)
may swallow signals. A job polls `requested` between its steps / volumes / stages; `check()` turns a request
into the Interrupted error (exit code 130, "stopped" event) at such a point.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

from CTDiffusionLib.errors import Interrupted
from CTDiffusionLib.runfolder import OUTPUT_MARKER, RunFolder


class StopFlag:
    """Set by SIGINT/SIGTERM or by a stop-request file; the job finishes its current step, saves what it can and
    stops (training: writes a checkpoint and exits with code 130)."""

    def __init__(self, request_file: Path | None = None):
        self.signalled = False
        self.request_file = request_file
        self._previous = {}

    @classmethod
    def for_output(cls, out: str | Path, clear: bool = True) -> "StopFlag":
        """The flag of a job writing into `out`; `clear` drops a request an earlier job left there, but only in a
        folder of ours (marked or a run folder): a file of that name in a folder of the user's is never touched."""
        request = RunFolder(out).stop_request
        if clear and (RunFolder(out).is_run() or (Path(out) / OUTPUT_MARKER).is_file()):
            request.unlink(missing_ok=True)
        return cls(request)

    @property
    def requested(self) -> bool:
        return self.signalled or (self.request_file is not None and self.request_file.exists())

    def check(self, message: str, hint: str = "") -> None:
        """At a point where stopping is clean: raise Interrupted(message, hint) when a stop was requested."""
        if self.requested:
            raise Interrupted(message, hint)

    def install(self) -> None:
        # SIGBREAK: what CTRL_BREAK (the Slicer module's Stop on Windows) raises in Python
        for sig in (signal.SIGINT, signal.SIGTERM, *filter(None, [getattr(signal, "SIGBREAK", None)])):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread): no signal handling
                pass

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


_ACTIVE: list[StopFlag] = []  # the flags of the jobs running in this process, innermost last (demo runs jobs)


@contextmanager
def stop_requests(out: str | Path | None):
    """Around one job writing into `out` (the command line does this for every command with --out): a stale
    request is dropped and `check()` anywhere in the job stops it at a clean point once OUT/stop-request appears.
    Signals keep their default meaning here (Ctrl+C still interrupts a job that never polls, e.g. `view`); a job
    that can stop cleanly on a signal installs its own flag (the trainer, utility)."""
    flag = StopFlag.for_output(out) if out else StopFlag()
    _ACTIVE.append(flag)
    try:
        yield flag
    finally:
        _ACTIVE.remove(flag)


def check(message: str, hint: str = "") -> None:
    """Stop the running job here (Interrupted) if a stop was requested; no-op outside `stop_requests`."""
    for flag in _ACTIVE:  # an enclosing job's request counts too (demo runs its stages as nested commands)
        flag.check(message, hint)
