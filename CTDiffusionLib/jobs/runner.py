"""Runs one CTDiffusion command in a child process without ever blocking the caller.

The caller (the Slicer widget's QTimer, a test loop) calls `poll()` now and then and gets the new events; the
child's stdout is read by a daemon thread into a queue, so `poll()` only drains what already arrived. The
child's stderr (human-readable log) is collected the same way and handed out by `take_log()`.

Stopping. Inside Slicer the process we start is `PythonSlicer`, a launcher (CTKAppLauncher) that runs the real
interpreter as its own child and does not forward signals: a SIGTERM kills the launcher and leaves the trainer
running. So the engine reports its own pid in its first ("start") event, and `cancel()` sends the stop request
(SIGTERM; CTRL_BREAK to the child's process group on Windows) to THAT process and also writes the job's
stop-request file in its output folder, which every job checks between its steps (training: every step;
generation: every denoising step; evaluation: between stages; see CTDiffusionLib/stopping.py) and which needs no
signal at all (a GUI process on Windows may be unable to send CTRL_BREAK). The trainer writes a checkpoint and
exits with code 130 so `--resume` continues the run. The job is finished only when the worker is gone (not when
the launcher is), and whatever is still alive after the grace period (long enough for a checkpoint of a
256x256x26 model, weights + EMA + optimizer > 1 GB) is killed, by `poll()` when `cancel(block=False)` or before
returning when `block=True`. `stop_in_background()` does the blocking stop on a thread (scene close), and
`stop_all_jobs(pump=...)` keeps a GUI event loop alive while it waits (application quit).

Stdlib + psutil only: no qt, no slicer, no torch. psutil is imported where it is used, never cached at import:
Slicer installs it on first use, after this module may already have been imported.
"""

from __future__ import annotations

import atexit
import collections
import os
import queue
import signal
import subprocess
import threading
import time
import weakref
from typing import Callable, Mapping, Sequence

from CTDiffusionLib.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK  # the one exit-code table
from CTDiffusionLib.events import EventReader, parse_event_line
from CTDiffusionLib.textformat import format_eta  # re-exported: the panel's progress text uses it

#: States a job goes through.
IDLE, RUNNING, STOPPING, FINISHED = "idle", "running", "stopping", "finished"
#: Seconds a stopping job gets to write its checkpoint before it is killed (a 256x256x26 model's checkpoint is
#: over a gigabyte; on a slow network drive that takes tens of seconds).
DEFAULT_GRACE_S = 180.0
#: After the worker is gone, how long to wait for the end of its stdout (a stray grandchild may hold the pipe).
_PIPE_LINGER_S = 2.0

_LIVE_RUNNERS: "weakref.WeakSet[JobRunner]" = weakref.WeakSet()


def _psutil():
    """psutil if it is importable now (never cached: it may be installed after this module was imported)."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def _process_tree(pid: int) -> list:
    """The process and all its descendants (empty when it is already gone, or without psutil)."""
    ps = _psutil()
    if ps is None:
        return []
    try:
        root = ps.Process(pid)
        return [root, *root.children(recursive=True)]
    except ps.Error:
        return []


def _alive(procs) -> list:
    ps = _psutil()
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != ps.STATUS_ZOMBIE:
                out.append(p)
        except ps.Error:
            pass
    return out


def _pid_alive(pid: int) -> bool:
    """Whether a process (not our own child: Popen tracks that one) still runs."""
    ps = _psutil()
    if ps is not None:
        try:
            return ps.Process(pid).status() != ps.STATUS_ZOMBIE
        except ps.Error:
            return False
    if os.name == "nt":  # pragma: no cover - psutil is installed together with the engine's packages
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def send_stop_request(pid: int, group: int | None = None) -> None:
    """Ask one engine process to stop (checkpoint, exit 130): SIGTERM on POSIX; on Windows CTRL_BREAK to its
    console process group (the group our child leads, which the worker shares with the launcher)."""
    try:
        if os.name == "nt":  # pragma: no cover - exercised on Windows only
            os.kill(group if group is not None else pid, signal.CTRL_BREAK_EVENT)
        else:
            os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass


def terminate_tree(pid: int, grace_s: float = 10.0, procs: Sequence | None = None) -> list[int]:
    """SIGTERM a process tree, wait up to `grace_s`, then SIGKILL what is left. Returns the pids it had to kill."""
    ps = _psutil()
    if ps is None:
        raise RuntimeError("psutil is needed to stop a process tree")
    procs = list(procs) if procs is not None else _process_tree(pid)
    for p in procs:
        try:
            p.terminate()
        except ps.Error:
            pass
    _, alive = ps.wait_procs(procs, timeout=max(0.0, grace_s))
    killed = []
    for p in alive:
        try:
            p.kill()
            killed.append(p.pid)
        except ps.Error:
            pass
    ps.wait_procs(alive, timeout=5)
    return killed


class JobRunner:
    """One child process, its event stream and its log.

    runner = JobRunner(argv, env=..., events_file=RUN_DIR/events.jsonl)
    runner.start()
    ... every 250 ms: for event in runner.poll(): ...
    runner.cancel()            # Stop: stop request to the worker, grace period, kill the rest (poll() finishes)
    runner.is_running, runner.exit_code, runner.state, runner.last_error, runner.done_event, runner.worker_pid
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None,
                 events_file: str | None = None, grace_s: float = DEFAULT_GRACE_S,
                 on_event: Callable[[dict], None] | None = None, stop_file: str | None = None):
        self.argv = [str(a) for a in argv]
        self.stop_file = stop_file
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
        self.worker_pid: int | None = None  # the engine process (the child itself, or the launcher's child)
        self.start_time: float | None = None
        self.end_time: float | None = None
        self._proc: subprocess.Popen | None = None
        self._stdout_queue: "queue.Queue[str | None]" = queue.Queue()
        self._log_queue: "queue.Queue[str]" = queue.Queue()
        self._reader = EventReader()
        self._threads: list[threading.Thread] = []
        self._stdout_closed = threading.Event()
        self._kill_deadline: float | None = None
        self._tree: dict = {}  # pid -> psutil.Process: every descendant seen while the child was alive
        self._tree_checked = 0.0
        self._log_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._gone_at: float | None = None
        self._lock = threading.RLock()
        self._stopper: threading.Thread | None = None

    @classmethod
    def from_command(cls, command, **kwargs) -> "JobRunner":
        """From a `commands.ChildCommand`."""
        return cls(command.argv, env=command.env, cwd=command.cwd, events_file=command.events_file,
                   stop_file=command.stop_file, **kwargs)

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
        """The engine's exit code: what it reported in its last event (through a launcher that was killed, the
        launcher's own code says nothing), else the child's return code."""
        if self._proc is None or self.state != FINISHED:
            return None
        for event in (self.done_event, self.last_error):
            if event and isinstance(event.get("exit_code"), int):
                return event["exit_code"]
        return self._proc.returncode

    @property
    def stopped(self) -> bool:
        """Ended because it was asked to (Stop/Cancel), with a resumable checkpoint when the engine managed one."""
        return self.state == FINISHED and self.cancel_requested

    @property
    def succeeded(self) -> bool:
        return self.state == FINISHED and self.exit_code == EXIT_OK and not self.cancel_requested

    def poll(self) -> list[dict]:
        """New events since the last call. Never blocks. Finishes the job once the child and its worker are gone."""
        if self._proc is None:
            return []
        with self._lock:
            return self._poll_locked()

    def _drain_stdout(self) -> str:
        """Whatever the reader thread has queued so far (never waits)."""
        chunk = []
        while True:
            try:
                chunk.append(self._stdout_queue.get_nowait())
            except queue.Empty:
                return "".join(chunk)

    def _poll_locked(self) -> list[dict]:
        chunk = self._drain_stdout()
        new = self._reader.feed(chunk) if chunk else []
        for event in new:
            self._record(event)
        if self.state not in (RUNNING, STOPPING):
            return new
        if self._proc.poll() is None and time.monotonic() - self._tree_checked > 1.0:
            self._remember_tree()
        if self.state == STOPPING and self._kill_deadline is not None and time.monotonic() >= self._kill_deadline:
            self._kill_remaining()
        if self._proc.poll() is not None:
            worker_alive = self.worker_pid not in (None, self._proc.pid) and _pid_alive(self.worker_pid)
            if worker_alive and self.state == RUNNING:
                # The launcher died (killed by someone else, crashed) but the engine runs on without a parent
                # that reads its events: stop it properly, it writes its checkpoint.
                self.cancel_requested = True
                self._begin_stop(self.grace_s)
            if worker_alive:
                return new
            # Child and worker exited. Their last lines may still be in the pipe: finish once the reader saw EOF
            # (or, if a stray grandchild holds the pipe open, a moment later) -- never by waiting here.
            if self._gone_at is None:
                self._gone_at = time.monotonic()
            if self._stdout_closed.is_set() or time.monotonic() - self._gone_at > _PIPE_LINGER_S:
                new += self._finish()
        return new

    def _remember_tree(self) -> None:
        self._tree_checked = time.monotonic()
        for p in _process_tree(self._proc.pid)[1:]:
            self._tree.setdefault(p.pid, p)

    def _finish(self) -> list[dict]:
        tail = self._reader.feed(self._drain_stdout() + "\n")
        for event in tail:
            self._record(event)
        leftovers = _alive(self._tree.values())
        if leftovers:  # helpers the worker left behind (it is gone, so nobody else will stop them)
            terminate_tree(leftovers[0].pid, grace_s=1.0, procs=leftovers)
        elif _psutil() is None and self.cancel_requested:
            self._kill_group()
        self.state = FINISHED
        self.end_time = time.time()
        _LIVE_RUNNERS.discard(self)
        return tail

    def _record(self, event: dict) -> None:
        self.events.append(event)
        kind = event.get("event")
        if kind == "start" and self.worker_pid is None:
            self._adopt_worker(event.get("pid"))
        elif kind == "progress":
            self.last_progress = event
        elif kind == "error":
            self.last_error = event
        elif kind == "done":
            self.done_event = event
        if self.on_event is not None:
            self.on_event(event)

    def _adopt_worker(self, pid) -> None:
        """The pid the engine reported, if it is the child or one of its descendants (never a stranger)."""
        if not isinstance(pid, int) or pid <= 0:
            return
        if pid != self._proc.pid:
            self._remember_tree()
            if _psutil() is not None and pid not in self._tree:
                return
        self.worker_pid = pid
        if self.state == STOPPING and pid != self._proc.pid:
            send_stop_request(pid, group=self._proc.pid)  # asked to stop before the worker said who it was

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

    def wait(self, timeout: float | None = None, interval: float = 0.05,
             pump: Callable[[], None] | None = None) -> bool:
        """Poll until finished (tests, scripts, the blocking stop). `pump` runs between polls (a GUI's event
        loop). True when it finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state in (RUNNING, STOPPING):
            self.poll()
            if self.state == FINISHED:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if pump is not None:
                pump()
            time.sleep(interval)
        return self.state == FINISHED

    # --------------------------------------------------------------------------------------------- cancel
    def cancel(self, block: bool = False, grace_s: float | None = None,
               pump: Callable[[], None] | None = None) -> None:
        """Ask the engine to stop: stop request now, kill what is left after the grace period.

        With block=False (the GUI's Stop) this returns at once and `poll()` escalates after the grace period;
        with block=True (closing the scene/Slicer, tests) it returns once the whole tree is gone, calling `pump`
        (e.g. the GUI's processEvents) while it waits.
        """
        if self._proc is None or self.state == FINISHED:
            return
        grace = self.grace_s if grace_s is None else grace_s
        with self._lock:
            self.cancel_requested = True
            if self.state == RUNNING:
                self._begin_stop(grace)
            elif grace_s is not None and self._kill_deadline is not None:
                self._kill_deadline = min(self._kill_deadline, time.monotonic() + grace)
        if block:
            self.wait(pump=pump)
        else:
            self.poll()

    def _begin_stop(self, grace: float) -> None:
        if self._proc.poll() is None:
            self._remember_tree()
        self.state = STOPPING
        self._kill_deadline = time.monotonic() + grace
        self._write_stop_file()
        if self.worker_pid is not None:
            # the engine itself; its helpers (data-loader workers) must live until it has saved
            send_stop_request(self.worker_pid, group=self._proc.pid)
        else:
            # it has not started yet (still importing): nothing to save, every process of the job may go
            send_stop_request(self._proc.pid, group=self._proc.pid)
            for pid in self._tree:
                send_stop_request(pid, group=self._proc.pid)

    def _write_stop_file(self) -> None:
        """The stop request that needs no signal: every job looks for this file between steps (a GUI process on
        Windows cannot always send CTRL_BREAK, and a launcher may not pass signals on)."""
        if not self.stop_file:
            return
        try:
            with open(self.stop_file, "w", encoding="utf-8") as f:
                f.write(f"stop requested at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        except OSError:  # the run folder is gone or read-only: the signal path still applies
            pass

    def stop_in_background(self, grace_s: float | None = None) -> threading.Thread:
        """Blocking stop on a daemon thread (closing a scene must not freeze the GUI while the engine saves).
        `stop_all_jobs` still waits for it when the application quits."""
        if self._stopper is None:
            self._stopper = threading.Thread(target=self.cancel, kwargs={"block": True, "grace_s": grace_s},
                                             name="CTDiffusion stop", daemon=True)
            self._stopper.start()
        return self._stopper

    def _kill_remaining(self) -> None:
        self._kill_deadline = None
        if self._proc.poll() is None:
            self._remember_tree()
            try:
                self._proc.kill()
            except OSError:
                pass
        ps = _psutil()
        if ps is None:
            self._kill_group()
            if self.worker_pid not in (None, self._proc.pid):
                try:
                    os.kill(self.worker_pid, getattr(signal, "SIGKILL", signal.SIGTERM))
                except OSError:
                    pass
            self._wait_root(5)
            return
        others = _alive(self._tree.values())
        for p in others:
            try:
                p.kill()
            except ps.Error:
                pass
        self._wait_root(5)
        ps.wait_procs(others, timeout=5)  # never the child itself: psutil would reap it behind Popen's back

    def _wait_root(self, timeout: float) -> None:
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

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
        with self._lock:
            self.cancel_requested = True
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


def running_jobs() -> list[JobRunner]:
    return [r for r in list(_LIVE_RUNNERS) if r.is_running]


def stop_all_jobs(grace_s: float | None = None, pump: Callable[[], None] | None = None) -> None:
    """Stop every running job of this process (Slicer quits, interpreter exits), each with its checkpoint;
    `pump` keeps a GUI responsive (and a progress dialog moving) while they save."""
    runners = running_jobs()
    for runner in runners:  # all of them save at the same time
        try:
            runner.cancel(block=False, grace_s=grace_s)
        except Exception:
            pass
    for runner in runners:
        try:
            runner.wait(pump=pump)
        except Exception:
            pass


atexit.register(stop_all_jobs)


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


__all__ = ["JobRunner", "terminate_tree", "stop_all_jobs", "running_jobs", "send_stop_request", "DEFAULT_GRACE_S", "format_eta", "describe_progress", "parse_event_line",
           "IDLE", "RUNNING", "STOPPING", "FINISHED", "EXIT_OK", "EXIT_FAILED", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED"]
