"""Child-process jobs: command lines (checked against the real CLI parser) and the non-blocking runner,
exercised with small fake children (python -c) that print events, trap SIGTERM and spawn grandchildren."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from CTDiffusionLib.cli import build_parser
from CTDiffusionLib.jobs import (
    EXIT_INTERRUPTED,
    FINISHED,
    JobRunner,
    build_command,
    child_environment,
    describe_progress,
    device_choices,
    format_eta,
    python_launcher,
)
from CTDiffusionLib.jobs import commands as commands_module
from CTDiffusionLib.jobs import panel
from CTDiffusionLib.requests import EvaluateRequest, GenerateRequest, PhantomsRequest, TrainRequest

REPO = Path(__file__).resolve().parents[1]


def _cli_args(command):
    """argv after `<python> -m CTDiffusionLib`."""
    i = command.argv.index("-m")
    assert command.argv[i + 1] == "CTDiffusionLib"
    return command.argv[i + 2:]


# ------------------------------------------------------------------------------------------------ commands
def test_train_command_parses_with_real_cli(tmp_path):
    s = TrainRequest(profile="cardiac-masks", data=[str(tmp_path / "a"), str(tmp_path / "b")], out=str(tmp_path / "run"),
                      preset="slice2d", steps=40, batch_size=2, lr=2e-4, schedule="cosine", augment=("zoom", "flip"),
                      grid=(64, 64), conditions=("group", "phase"), checkpoint_every=10, sample_every=0, seed=3,
                      device="cuda:1", resume=True)
    cmd = build_command(s, in_slicer=False)
    args = build_parser().parse_args(_cli_args(cmd))
    assert args.command == "train" and args.profile == "cardiac-masks"
    assert args.data == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert (args.steps, args.epochs, args.batch_size, args.lr) == (40, None, 2, 2e-4)
    assert (args.schedule, args.augment, args.grid, args.conditions) == ("cosine", "zoom,flip", "64x64", "group,phase")
    assert (args.checkpoint_every, args.sample_every, args.seed, args.device) == (10, 0, 3, "cuda:1")
    assert args.resume and args.events
    assert cmd.events_file == str(tmp_path / "run" / "events.jsonl")
    assert cmd.argv[0] == sys.executable


def test_train_command_minimal_and_validation(tmp_path):
    args = TrainRequest(profile="prostate-ct", data=["d"], out="r", augment=()).argv()
    parsed = build_parser().parse_args(args)
    assert parsed.augment == "none" and parsed.device == "auto" and parsed.epochs is None and not parsed.resume
    with pytest.raises(ValueError):
        TrainRequest(profile="prostate-ct", data=[], out="r").argv()
    with pytest.raises(ValueError):
        TrainRequest(profile="prostate-ct", data=["d"], out="r", epochs=2, steps=3).argv()


def test_generate_evaluate_phantoms_commands_parse(tmp_path):
    parser = build_parser()
    g = _cli_args(build_command(GenerateRequest(model="run", num=2, out="gen", sampler="ddim", steps=10, seed=5,
                                                reference="ref.nrrd", condition={"group": "DCM", "phase": "ED"},
                                                guidance_scale=2.5, device="cpu")))
    a = parser.parse_args(g)
    assert (a.model, a.num, a.sampler, a.steps, a.seed, a.reference) == ("run", 2, "ddim", 10, 5, "ref.nrrd")
    assert a.condition == "group=DCM,phase=ED" and a.guidance_scale == 2.5 and a.events
    # unconditional: neither --condition nor --guidance-scale; empty combo values are left out
    unconditional = GenerateRequest(model="m", num=1, out="o", condition={"group": "", "phase": ""})
    a = parser.parse_args(GenerateRequest(model="m", num=1, out="o", condition=unconditional.condition,
                                          guidance_scale=panel.guidance_scale(unconditional.condition, 3.0)).argv())
    assert a.condition is None and a.guidance_scale is None
    e = parser.parse_args(_cli_args(build_command(EvaluateRequest(real="r", generated="g", out="rep", train="t",
                                                                  run="run"))))
    assert (e.real, e.generated, e.out, e.train, e.run, e.events) == ("r", "g", "rep", "t", "run", True)
    p = parser.parse_args(PhantomsRequest(profile="prostate-ct", num=3, out="ph", seed=1, size=(48, 48, 12)).argv())
    assert (p.num, p.size, p.seed) == (3, "48x48x12", 1)


def test_launcher_inside_and_outside_slicer(tmp_path, monkeypatch):
    assert python_launcher(in_slicer=False) == [sys.executable]
    # inside Slicer: PythonSlicer from PATH, else SLICER_HOME/bin, else this interpreter
    bindir = tmp_path / "Slicer" / "bin"
    bindir.mkdir(parents=True)
    launcher = bindir / "PythonSlicer"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    assert python_launcher(in_slicer=True, path=str(bindir)) == [str(launcher)]
    assert python_launcher(in_slicer=True, slicer_home=tmp_path / "Slicer", path=str(tmp_path)) == [str(launcher)]
    assert python_launcher(in_slicer=True, path=str(tmp_path)) == [sys.executable]
    # detection: plain Python (and slicer-core) have no slicer.app
    assert commands_module.in_slicer_application() is False
    fake = type(sys)("slicer")
    fake.app = object()
    monkeypatch.setitem(sys.modules, "slicer", fake)
    assert commands_module.in_slicer_application() is True


def test_child_environment_puts_library_first():
    env = child_environment({"PYTHONPATH": os.pathsep.join(["/x", str(REPO)]), "A": "1"}, library_parent=str(REPO))
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/x"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["A"] == "1"
    assert Path(commands_module.LIBRARY_PARENT, "CTDiffusionLib", "__init__.py").is_file()


def test_device_choices_and_progress_text():
    assert device_choices(0) == [("Auto (GPU if available)", "auto"), ("CPU", "cpu")]
    assert [v for _, v in device_choices(2)] == ["auto", "cuda:0", "cuda:1", "cpu"]
    assert format_eta(None) == "" and format_eta(12) == "12 s" and format_eta(250) == "4 min 10 s"
    assert format_eta(3900) == "1 h 05 min"
    text = describe_progress({"phase": "train", "step": 3, "total": 10, "loss": 0.5, "eta_s": 61})
    assert text == "train 3/10 · loss 0.5 · ETA 1 min 01 s"


def test_jobs_package_is_light():
    """stdlib + psutil only: no qt, slicer or torch after importing the jobs package in a fresh interpreter."""
    code = ("import sys, CTDiffusionLib.jobs; bad = [m for m in ('torch', 'qt', 'slicer', 'PySide6', 'monai', "
            "'numpy') if m in sys.modules]; print(bad)")
    out = psutil.Popen([sys.executable, "-c", code], stdout=-1, env=child_environment(), text=True).communicate()[0]
    assert out.strip() == "[]"


# -------------------------------------------------------------------------------------------------- runner
from job_fakes import FAKE_CHILD, LAUNCHER, _fake  # noqa: E402


def _gone(pid):
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _until_progress(r, timeout=30):
    deadline = time.monotonic() + timeout
    while not r.last_progress and time.monotonic() < deadline:
        r.poll()
        time.sleep(0.02)
    assert r.last_progress, r.log_tail


def test_runner_reads_events_without_blocking():
    seen = []
    r = _fake(steps=6, on_event=seen.append).start()
    assert r.is_running and r.exit_code is None
    events, longest = [], 0.0
    deadline = time.monotonic() + 30
    while r.state != FINISHED and time.monotonic() < deadline:
        t = time.perf_counter()
        events += r.poll()
        longest = max(longest, time.perf_counter() - t)
        time.sleep(0.02)
    assert r.state == FINISHED and r.exit_code == 0 and r.succeeded and not r.stopped
    assert longest < 0.1, f"poll() blocked for {longest:.3f} s"
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("progress") == 6
    assert seen == events == r.events
    assert r.last_progress["step"] == 6 and r.progress_fraction() == 1.0
    assert r.done_event["status"] == "completed"
    assert "log line on stderr" in r.take_log() and r.take_log() == []
    assert r.error_message() is None


def test_runner_cancel_stops_tree_and_reports_stopped():
    r = _fake(steps=400, spawn=1, grace_s=10).start()
    grandchild = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for e in r.poll():
            if e["event"] == "start":
                grandchild = e["grandchild"]
        if r.last_progress:
            break
        time.sleep(0.02)
    assert grandchild and psutil.pid_exists(grandchild)
    pid = r.pid
    t = time.perf_counter()
    r.cancel()  # non-blocking
    assert time.perf_counter() - t < 0.5
    assert r.wait(timeout=20)
    assert r.exit_code == EXIT_INTERRUPTED and r.stopped and not r.succeeded
    assert r.done_event["status"] == "stopped" and any(e["event"] == "checkpoint" for e in r.events)
    assert r.error_message() is None
    for p in (pid, grandchild):
        assert not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE


def test_runner_kills_child_that_ignores_sigterm():
    r = _fake(steps=400, ignore_term=1, spawn=1).start()
    while not r.last_progress:
        r.poll()
        time.sleep(0.02)
    pid = r.pid
    t = time.monotonic()
    r.cancel(block=True, grace_s=0.5)
    assert r.state == FINISHED and time.monotonic() - t < 10
    assert r.exit_code == -signal.SIGKILL and r.stopped
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_runner_error_event_becomes_readable_message():
    r = _fake(fail=1).start()
    assert r.wait(timeout=20)
    assert r.exit_code == 2 and not r.succeeded
    assert r.error_message() == "Case 3 is not a CT volume.\nRemove it from the data folder."


def test_runner_without_error_event_uses_log_tail():
    r = JobRunner([sys.executable, "-c", "import sys; print('Traceback: boom', file=sys.stderr); sys.exit(1)"]).start()
    assert r.wait(timeout=20)
    assert r.exit_code == 1
    msg = r.error_message()
    assert "exit code 1" in msg and "boom" in msg


def test_runner_from_command(tmp_path):
    cmd = build_command(PhantomsRequest(profile="prostate-ct", num=1, out=str(tmp_path / "x")), in_slicer=False)
    assert cmd.events_file is None and cmd.argv[:3] == [sys.executable, "-m", "CTDiffusionLib"]
    r = JobRunner.from_command(cmd)
    assert r.argv == cmd.argv and r.env["PYTHONPATH"].startswith(commands_module.LIBRARY_PARENT)


# ------------------------------------------------------------------------------------- run folder facts
def test_model_conditions_and_run_facts(tmp_path):
    from CTDiffusionLib.jobs.commands import can_resume, model_conditions, run_data_sources

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.json").write_text(json.dumps(
        {"profile": "cardiac-masks", "conditions": {"group": ["DCM", "HCM", "MINF", "NOR", "RV"], "phase": ["ED", "ES"]}}))
    assert model_conditions(run) == {"group": ["DCM", "HCM", "MINF", "NOR", "RV"], "phase": ["ED", "ES"]}
    assert model_conditions(run / "model") == model_conditions(run)  # bundle folder directly
    (run / "model" / "model.json").write_text(json.dumps({"profile": "prostate-ct", "conditions": {}}))
    assert model_conditions(run) == {} and model_conditions(None) == {} and model_conditions(tmp_path / "x") == {}
    assert not can_resume(run) and run_data_sources(run) == []
    (run / "config.json").write_text(json.dumps({"data": {"sources": ["/data/ct"], "grid": [32, 32, 8]}}))
    (run / "checkpoints").mkdir()
    assert not can_resume(run)
    (run / "checkpoints" / "step_00000004.pt").write_bytes(b"x")
    assert can_resume(run) and run_data_sources(run) == ["/data/ct"]


def test_runner_works_without_psutil(tmp_path):
    """Before the first-use install, Slicer may lack psutil: the panel still loads and Stop still reaches the
    engine through the launcher (it reported its pid), which saves; the rest is killed as a process group."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.modules["psutil"] = None  # import psutil -> ImportError
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / "Testing")!r})
        from job_fakes import _fake
        r = _fake(steps=400, save_s=0.3, launcher=True).start()
        while not r.last_progress:
            r.poll(); time.sleep(0.02)
        r.cancel(block=True, grace_s=30)
        print("state", r.state, r.exit_code, [e["event"] for e in r.events][-2:])
    """)
    out = psutil.Popen([sys.executable, "-c", script], stdout=-1, stderr=-1, text=True,
                       env=child_environment()).communicate(timeout=60)
    assert "state finished 130 ['checkpoint', 'done']" in out[0], out


def test_cancel_works_when_psutil_is_imported_after_the_runner(tmp_path):
    """Slicer installs psutil on first use, after the runner module was imported: stopping must use it then
    (here: a helper in its own session, which only psutil's process tree finds, must not be left behind)."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.modules["psutil"] = None
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / "Testing")!r})
        from CTDiffusionLib.jobs import runner as runner_module
        del sys.modules["psutil"]  # ... and now it is installed
        from job_fakes import _fake
        r = _fake(steps=400, spawn=2, launcher=True).start()
        grandchild = None
        while not r.last_progress:
            for e in r.poll():
                grandchild = e.get("grandchild", grandchild)
            time.sleep(0.02)
        r.cancel(block=True, grace_s=30)
        import psutil
        alive = psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE
        print("result", r.exit_code, [e["event"] for e in r.events][-2:], "grandchild alive", alive)
        if alive:
            psutil.Process(grandchild).kill()
    """)
    out = psutil.Popen([sys.executable, "-c", script], stdout=-1, stderr=-1, text=True,
                       env=child_environment()).communicate(timeout=60)
    assert "result 130 ['checkpoint', 'done'] grandchild alive False" in out[0], out


# ------------------------------------------------------------------ stopping through the PythonSlicer launcher
def test_launcher_standin_does_not_forward_sigterm():
    """The premise of the tests below (as in CTKAppLauncher): SIGTERM to the launcher leaves the engine running."""
    r = _fake(steps=400, launcher=True).start()
    _until_progress(r)
    assert r.worker_pid and r.worker_pid != r.pid
    os.kill(r.pid, signal.SIGTERM)
    r._proc.wait(timeout=10)
    time.sleep(0.3)
    assert not _gone(r.worker_pid), "the launcher forwarded SIGTERM"
    # the runner sees the launcher gone and the engine orphaned: it stops the engine properly
    assert r.wait(timeout=30)
    assert r.events[-1]["event"] == "done" and r.events[-1]["status"] == "stopped" and _gone(r.worker_pid)


def test_stop_through_launcher_reaches_the_engine():
    r = _fake(steps=400, spawn=1, save_s=1.0, launcher=True).start()
    _until_progress(r)
    launcher, worker = r.pid, r.worker_pid
    grandchild = next(e["grandchild"] for e in r.events if e["event"] == "start")
    stopped_at = r.last_progress["step"]
    t = time.perf_counter()
    r.cancel()  # Stop: non-blocking
    assert time.perf_counter() - t < 0.5
    assert r.wait(timeout=30)
    assert r.stopped and r.exit_code == EXIT_INTERRUPTED and r.error_message() is None
    checkpoint = next(e for e in r.events if e["event"] == "checkpoint")
    assert checkpoint["step"] >= stopped_at
    for pid in (launcher, worker, grandchild):
        assert _gone(pid), pid


@pytest.mark.parametrize("how", ["blocking", "background"])
def test_blocking_stop_saves_and_keeps_the_gui_alive(how):
    """Scene close / quit: the engine saves (1.5 s here), the GUI's event loop keeps running meanwhile."""
    r = _fake(steps=400, save_s=1.5, launcher=True).start()
    _until_progress(r)
    launcher, worker = r.pid, r.worker_pid
    pumped = []
    if how == "blocking":
        r.cancel(block=True, pump=lambda: pumped.append(1))
        assert len(pumped) > 5  # called while waiting for the checkpoint
    else:
        t = time.perf_counter()
        thread = r.stop_in_background()
        assert time.perf_counter() - t < 0.5
        thread.join(timeout=30)
    assert r.state == FINISHED and r.exit_code == EXIT_INTERRUPTED
    assert [e["event"] for e in r.events][-2:] == ["checkpoint", "done"]
    assert _gone(launcher) and _gone(worker)


def test_stop_all_jobs_waits_for_every_checkpoint():
    from CTDiffusionLib.jobs.runner import running_jobs, stop_all_jobs

    runners = [_fake(steps=400, save_s=1.0, launcher=True).start() for _ in range(2)]
    for r in runners:
        _until_progress(r)
    assert set(runners) <= set(running_jobs())
    stop_all_jobs()
    for r in runners:
        assert r.state == FINISHED and r.events[-1]["status"] == "stopped"
        assert _gone(r.pid) and _gone(r.worker_pid)


def test_worker_pid_must_belong_to_the_job():
    """A start event naming a process outside the job's tree is not trusted (the runner never signals strangers)."""
    r = JobRunner([sys.executable, "-c", "import json,time; print(json.dumps({'event':'start','pid':1}), flush=True); "
                                         "time.sleep(30)"]).start()
    while not r.events:
        r.poll()
        time.sleep(0.02)
    assert r.worker_pid is None
    r.cancel(block=True, grace_s=5)
    assert r.state == FINISHED


def test_dependency_check(tmp_path):
    from CTDiffusionLib.jobs import dependencies as deps

    reqs = deps.parse_requirements("# comment\nmonai>=1.4\npsutil\nnot-a-real-package-xyz>=1\nnumpy>=1\n-r other.txt\n"
                                   "einops>=999\n")
    assert [r.name for r in reqs] == ["monai", "psutil", "not-a-real-package-xyz", "numpy", "einops"]
    status = deps.check(reqs, modules={"einops": object()})
    assert [r.name for r in status.missing] == ["not-a-real-package-xyz", "einops"]  # numpy is Slicer's: skipped
    assert status.restart_recommended  # einops is installed (too old) and already imported
    assert status.torch_installed and not status.ok and "not-a-real-package-xyz>=1" in status.text()
    assert deps.satisfied(deps.Requirement("x>=1.4", "x", ">=", "1.4"), "1.6.1")
    assert not deps.satisfied(deps.Requirement("x>=1.10", "x", ">=", "1.10"), "1.9.0")
    req_file = REPO / "CTDiffusion" / "Resources" / "requirements.txt"
    assert deps.check(req_file).ok  # this environment has everything the module would install


def test_torch_version_and_slicer_version_checks(monkeypatch):
    from CTDiffusionLib.jobs import dependencies as deps

    status = deps.DependencyStatus(torch_installed=True, torch_version="2.1.2+cu118")
    assert status.torch_too_old and not status.ok and "PyTorch 2.4 or newer (installed: 2.1.2+cu118" in status.text()
    assert deps.DependencyStatus(torch_installed=True, torch_version="2.13.0").ok
    assert not deps.DependencyStatus(torch_installed=False).ok
    assert deps.check([]).torch_version  # this environment's torch, read from metadata without importing it
    assert deps.unsupported_slicer((5, 10), (3, 12)) is None and deps.unsupported_slicer((5, 12), (3, 12)) is None
    sentence = deps.unsupported_slicer((5, 8), (3, 9))
    assert sentence.startswith("CTDiffusion needs Slicer 5.10 or newer (this is Slicer 5.8 with Python 3.9")
    assert deps.unsupported_slicer((5, 6), (3, 9)) and sentence.count(".") >= 3


def test_engine_start_event_names_its_process(tmp_path):
    """The runner stops THIS pid (a launcher in between does not forward signals)."""
    from CTDiffusionLib.events import EventWriter, read_events

    writer = EventWriter(tmp_path / "events.jsonl")
    assert writer.emit("start", command="train")["pid"] == os.getpid()
    assert "pid" not in writer.emit("progress", step=1)
    assert next(read_events(tmp_path / "events.jsonl"))["pid"] == os.getpid()
