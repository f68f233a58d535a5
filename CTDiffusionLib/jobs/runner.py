"""Runs one CTDiffusion command in a child process without ever blocking the caller.

The caller (the Slicer widget's QTimer, a test loop) calls `poll()` now and then and gets the new events; the
child's stdout is read by a daemon thread into a queue, so `poll()` only drains what already arrived. The
child's stderr (human-readable log) is collected the same way and handed out by `take_log()`.

`cancel()` stops the whole process tree: SIGTERM (CTRL_BREAK on Windows) to the child, which writes a checkpoint
and exits with code 130 so `--resume` continues the run; its own children are stopped when it is gone, and
whatever is still alive after the grace period is killed (by `poll()` when `cancel(block=False)`, or before
returning when `block=True`).

Stdlib + psutil only: no qt, no slicer, no torch.
"""

from __future__ import annotations

import atexit
import collections
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Callable, Iterable, Mapping, Sequence

try:  # psutil is one of the packages the Slicer module installs on first use; the panel must load without it
    import psutil
except ImportError:  # pragma: no cover - exercised only in a Slicer without the packages yet
    psutil = None

from CTDiffusionLib.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK  # the one exit-code table
from CTDiffusionLib.events import EventReader, parse_event_line
from CTDiffusionLib.textformat import format_eta  # re-exported: the panel's progress text uses it

#: States a job goes through.
IDLE, RUNNING, STOPPING, FINISHED = "idle", "running", "stopping", "finished"

_LIVE_RUNNERS: "weakref.WeakSet[JobRunner]" = weakref.WeakSet()


def _process_tree(pid: int) -> list:
    """The process and all its descendants (empty when it is already gone, or without psutil)."""
    if psutil is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(procs: Iterable) -> list:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def terminate_tree(pid: int, grace_s: float = 10.0, procs: Sequence | None = None) -> list[int]:
    """SIGTERM a process tree, wait up to `grace_s`, then SIGKILL what is left. Returns the pids it had to kill."""
    if psutil is None:
        raise RuntimeError("psutil is needed to stop a process tree")
    procs = list(procs) if procs is not None else _process_tree(pid)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=max(0.0, grace_s))
    killed = []
    for p in alive:
        try:
            p.kill()
            killed.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return killed


class JobRunner:
    """One child process, its event stream and its log.

    runner = JobRunner(argv, env=..., events_file=RUN_DIR/events.jsonl)
    runner.start()
    ... every 200 ms: for event in runner.poll(): ...
    runner.cancel()            # Stop: SIGTERM tree, grace period, kill the rest (poll() finishes the job)
    runner.is_running, runner.exit_code, runner.state, runner.last_error, runner.done_event
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None,
                 events_file: str | None = None, grace_s: float = 20.0,
                 on_event: Callable[[dict], None] | None = None):
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.events_file = events_file
        self.grace_s = grace_s
        self.on_event = on_event
        self.state = IDLE
        self.events: list[dict] = []  # every event seen so far
        self.last_progress: dict | None = None
        self.last_error: dict | None = None
        self.done_event: dict | None = None
        self.cancel_requested = False
        self.start_time: float | None = None
        self.end_time: float | None = None
        self._proc: subprocess.Popen | None = None
        self._stdout_queue: "queue.Queue[str | None]" = queue.Queue()
        self._log_queue: "queue.Queue[str]" = queue.Queue()
        self._reader = EventReader()
        self._threads: list[threading.Thread] = []
        self._stdout_closed = threading.Event()
        self._kill_deadline: float | None = None
        self._tree: list = []
        self._log_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._exited_at: float | None = None

    @classmethod
    def from_command(cls, command, **kwargs) -> "JobRunner":
        """From a `commands.ChildCommand`."""
        return cls(command.argv, env=command.env, cwd=command.cwd, events_file=command.events_file, **kwargs)

    # ----------------------------------------------------------------------------------------------- start
    def start(self) -> "JobRunner":
        if self.state != IDLE:
            raise RuntimeError("this job was already started")
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: signals to Slicer don't hit it and vice versa
        self._proc = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        self.start_time = time.time()
        self.state = RUNNING
        for stream, sink in ((self._proc.stdout, self._stdout_queue), (self._proc.stderr, self._log_queue)):
            t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            t.start()
            self._threads.append(t)
        _LIVE_RUNNERS.add(self)
        return self

    def _pump(self, stream, sink: queue.Queue) -> None:
        try:
            for line in iter(stream.readline, ""):
                sink.put(line)
                if sink is self._log_queue:
                    self._log_tail.append(line.rstrip("\n"))
        except (OSError, ValueError):
            pass
        finally:
            if sink is self._stdout_queue:
                self._stdout_closed.set()

    # ----------------------------------------------------------------------------------------------- poll
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def is_running(self) -> bool:
        return self.state in (RUNNING, STOPPING)

    @property
    def exit_code(self) -> int | None:
        return self._proc.returncode if self._proc is not None and self.state == FINISHED else None

    @property
    def stopped(self) -> bool:
        """Ended because it was asked to (Stop/Cancel), with a resumable checkpoint when the engine managed one."""
        return self.state == FINISHED and self.cancel_requested

    @property
    def succeeded(self) -> bool:
        return self.state == FINISHED and self.exit_code == EXIT_OK and not self.cancel_requested

    def poll(self) -> list[dict]:
        """New events since the last call. Never blocks. Finishes the job once the child is gone."""
        if self._proc is None:
            return []
        chunk = []
        while True:
            try:
                chunk.append(self._stdout_queue.get_nowait())
            except queue.Empty:
                break
        new = self._reader.feed("".join(chunk)) if chunk else []
        for event in new:
            self._record(event)
        if self.state == STOPPING and self._kill_deadline is not None and time.monotonic() >= self._kill_deadline:
            self._kill_remaining()
        if self.state in (RUNNING, STOPPING) and self._proc.poll() is not None:
            # The child exited. Its last lines may still be in the pipe: finish once the reader saw EOF (or,
            # if a stray grandchild holds the pipe open, a moment later) -- never by waiting here.
            if self._exited_at is None:
                self._exited_at = time.monotonic()
            if self._stdout_closed.is_set() or time.monotonic() - self._exited_at > 2.0:
                new += self._finish()
        return new

    def _finish(self) -> list[dict]:
        rest = []
        while True:
            try:
                rest.append(self._stdout_queue.get_nowait())
            except queue.Empty:
                break
        tail = self._reader.feed("".join(rest) + "\n")
        for event in tail:
            self._record(event)
        known = {p.pid for p in self._tree}
        self._tree += [p for p in _process_tree(self._proc.pid)[1:] if p.pid not in known]
        leftovers = _alive(p for p in self._tree if p.pid != self._proc.pid)
        if leftovers:  # helpers the child left behind (it is gone, so nobody else will stop them)
            terminate_tree(leftovers[0].pid, grace_s=0.5, procs=leftovers)
        elif psutil is None and self.cancel_requested:
            self._kill_group()
        self.state = FINISHED
        self.end_time = time.time()
        _LIVE_RUNNERS.discard(self)
        return tail
        return new

    def _record(self, event: dict) -> None:
        self.events.append(event)
        kind = event.get("event")
        if kind == "progress":
            self.last_progress = event
        elif kind == "error":
            self.last_error = event
        elif kind == "done":
            self.done_event = event
        if self.on_event is not None:
            self.on_event(event)

    def take_log(self) -> list[str]:
        """New stderr lines (the human-readable log) since the last call."""
        lines = []
        while True:
            try:
                line = self._log_queue.get_nowait()
            except queue.Empty:
                break
            lines.append(line.rstrip("\n"))
        return lines

    @property
    def log_tail(self) -> list[str]:
        return list(self._log_tail)

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> bool:
        """Poll until finished (tests and scripts only; the GUI never calls this). True when it finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state in (RUNNING, STOPPING):
            self.poll()
            if self.state == FINISHED:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(interval)
        return self.state == FINISHED

    # --------------------------------------------------------------------------------------------- cancel
    def cancel(self, block: bool = False, grace_s: float | None = None) -> None:
        """Ask the child (and its children) to stop: SIGTERM now, SIGKILL what is left after the grace period.

        With block=False (the GUI) this returns at once and `poll()` escalates after the grace period; with
        block=True (closing Slicer/the scene, tests) it returns once the whole tree is gone.
        """
        if self._proc is None or self.state == FINISHED:
            return
        grace = self.grace_s if grace_s is None else grace_s
        self.cancel_requested = True
        if self.state == RUNNING:
            self._tree = _process_tree(self._proc.pid)
            self.state = STOPPING
            self._kill_deadline = time.monotonic() + grace
            self._signal_tree()
        if block:
            self._wait_root(max(0.0, self._kill_deadline - time.monotonic()))
            if self._proc.poll() is None or _alive(self._descendants()):
                self._kill_remaining()
            self.wait(timeout=10)
        else:
            self.poll()

    def _signal_tree(self) -> None:
        """SIGTERM goes to the child first: it is the one that writes the checkpoint, and its helpers (data
        loader workers) must stay alive until it has; the helpers still running when the child is gone, or when
        the grace period ends, are killed with it (see `_finish` / `_kill_remaining`)."""
        if os.name == "nt":
            try:
                self._proc.send_signal(signal.CTRL_BREAK_EVENT)  # the child's own process group
            except (OSError, ValueError):
                pass
            return
        try:
            self._proc.send_signal(signal.SIGTERM)
        except OSError:
            pass

    def _descendants(self) -> list:
        """Known and current descendants of the child (not the child itself: Popen owns and reaps it)."""
        procs = [p for p in self._tree if p.pid != self._proc.pid]
        procs += [p for p in _process_tree(self._proc.pid)[1:] if p not in procs]
        return procs

    def _wait_root(self, timeout: float) -> None:
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def _kill_remaining(self) -> None:
        self._kill_deadline = None
        others = self._descendants()
        if self._proc.poll() is None:
            try:
                self._proc.kill()
            except OSError:
                pass
        if psutil is None:
            self._kill_group()
            self._wait_root(5)
            return
        for p in _alive(others):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self._wait_root(5)
        psutil.wait_procs(others, timeout=5)  # never the child itself: psutil would reap it behind Popen's back

    def _kill_group(self) -> None:
        """Without psutil: the child leads its own session, so its process group is the whole tree (POSIX)."""
        if os.name != "nt":
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass

    def kill(self) -> None:
        """Immediate SIGKILL of the whole tree (no checkpoint)."""
        if self._proc is None or self.state == FINISHED:
            return
        self.cancel_requested = True
        self._tree = _process_tree(self._proc.pid)
        self.state = STOPPING
        self._kill_remaining()
        self.wait(timeout=10)

    # ---------------------------------------------------------------------------------------------- report
    def error_message(self) -> str | None:
        """One readable paragraph for a failed job: the engine's error event (message + hint), else the log."""
        if self.state != FINISHED or self.exit_code == EXIT_OK:
            return None
        if self.cancel_requested:
            return None
        if self.last_error:
            text = str(self.last_error.get("message") or "The job failed.")
            hint = self.last_error.get("hint")
            return f"{text}\n{hint}" if hint else text
        tail = [line for line in self._log_tail if line.strip()][-5:]
        detail = ("\n" + "\n".join(tail)) if tail else ""
        return f"The job ended with exit code {self.exit_code}.{detail}"

    def progress_fraction(self) -> float | None:
        p = self.last_progress
        if not p or not p.get("total"):
            return None
        try:
            return max(0.0, min(1.0, float(p.get("step") or 0) / float(p["total"])))
        except (TypeError, ValueError, ZeroDivisionError):
            return None

    def __del__(self):  # a forgotten runner must not leave a child behind
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._kill_remaining()
        except Exception:
            pass


def stop_all_jobs(grace_s: float = 10.0) -> None:
    """Stop every running job of this process (Slicer quits, scene closes, interpreter exits)."""
    for runner in list(_LIVE_RUNNERS):
        try:
            runner.cancel(block=True, grace_s=grace_s)
        except Exception:
            pass


atexit.register(stop_all_jobs, 5.0)


def describe_progress(event: dict | None) -> str:
    """Progress bar text for one progress event, e.g. 'train 120/2000 · loss 0.0312 · ETA 4 min 10 s'."""
    if not event:
        return ""
    parts = [str(event.get("phase") or "")]
    step, total = event.get("step"), event.get("total")
    if step is not None and total:
        parts[-1] += f" {step}/{total}"
    loss = event.get("loss")
    if isinstance(loss, (int, float)):
        parts.append(f"loss {loss:.4g}")
    eta = format_eta(event.get("eta_s"))
    if eta:
        parts.append(f"ETA {eta}")
    return " · ".join(p for p in parts if p)


__all__ = ["JobRunner", "terminate_tree", "stop_all_jobs", "format_eta", "describe_progress", "parse_event_line",
           "IDLE", "RUNNING", "STOPPING", "FINISHED", "EXIT_OK", "EXIT_FAILED", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED"]
