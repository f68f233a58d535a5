"""Fake engine children for the job tests (stdlib only, so a test can import it in an interpreter without
psutil): prints events like the engine (its pid in "start"), traps SIGTERM like the trainer (finish the step,
save, report, exit 130), optionally spawns a grandchild, and runs directly or through the PythonSlicer
stand-in (launcher_standin.py)."""

import sys
import textwrap
from pathlib import Path

from CTDiffusionLib.jobs import JobRunner

REPO = Path(__file__).resolve().parents[1]

FAKE_CHILD = textwrap.dedent(r'''
    import json, os, signal, subprocess, sys, time
    steps, ignore_term, spawn, fail = (int(a) for a in sys.argv[1:5])
    save_s = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    stop = []
    def emit(kind, **kw):
        print(json.dumps({"event": kind, **kw}), flush=True)
    if spawn:  # a grandchild (like a DataLoader worker) that must die with the job; 2: in its own session
        gc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=spawn == 2)
        emit("start", pid=os.getpid(), grandchild=gc.pid)
    else:
        emit("start", pid=os.getpid())
    def on_term(signum, frame):
        if not ignore_term:
            stop.append(signum)
    signal.signal(signal.SIGTERM, on_term)
    print("some free text the parent must ignore", flush=True)
    print("log line on stderr", file=sys.stderr, flush=True)
    if fail:
        emit("error", message="Case 3 is not a CT volume.", hint="Remove it from the data folder.", exit_code=2)
        sys.exit(2)
    for i in range(1, steps + 1):
        if stop:  # like the trainer: finish the step, save (takes save_s), report, exit 130
            time.sleep(save_s)
            emit("checkpoint", path="ckpt.safetensors", step=i - 1)
            emit("done", status="stopped", exit_code=130)
            sys.exit(130)
        emit("progress", phase="train", step=i, total=steps, loss=1.0 / i, eta_s=(steps - i) * 0.05)
        time.sleep(0.05)
    emit("done", status="completed", bundle="model")
''')

LAUNCHER = REPO / "Testing" / "launcher_standin.py"


def _fake_argv(steps=5, ignore_term=0, spawn=0, fail=0, save_s=0.0):
    return ["-c", FAKE_CHILD, str(steps), str(ignore_term), str(spawn), str(fail), str(save_s)]


def _fake(steps=5, ignore_term=0, spawn=0, fail=0, save_s=0.0, launcher=False, **kw):
    """The fake engine, run directly or (launcher=True) through the PythonSlicer stand-in."""
    prefix = [sys.executable, str(LAUNCHER)] if launcher else [sys.executable]
    return JobRunner([*prefix, *_fake_argv(steps, ignore_term, spawn, fail, save_s)], **kw)
