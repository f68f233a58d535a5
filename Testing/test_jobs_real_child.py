"""The job runner with the real engine as the child: a short CPU training on phantoms, events read while polling
(never blocking), Stop (SIGTERM to the process tree -> checkpoint -> exit 130, no process left), then --resume
continues from that checkpoint."""

from __future__ import annotations

import time

import psutil
import pytest

from CTDiffusionLib.jobs import EXIT_INTERRUPTED, JobRunner, build_command
from CTDiffusionLib.requests import PhantomsRequest, TrainRequest


def _poll_until(runner, predicate, timeout):
    events, longest = [], 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = time.perf_counter()
        events += runner.poll()
        longest = max(longest, time.perf_counter() - t)
        if predicate(events):
            return events, longest
        time.sleep(0.05)
    runner.kill()
    pytest.fail(f"timed out; events so far: {[e.get('event') for e in events]}\n" + "\n".join(runner.log_tail[-20:]))


def test_train_cancel_resume_with_real_child(tmp_path):
    data = tmp_path / "phantoms"
    phantoms = JobRunner.from_command(build_command(
        PhantomsRequest(profile="prostate-ct", num=3, out=str(data), seed=1, size=(48, 48, 12)),
        in_slicer=False)).start()
    assert phantoms.wait(timeout=120) and phantoms.succeeded, phantoms.error_message()

    run = tmp_path / "run"
    settings = TrainRequest(profile="prostate-ct", data=[str(data)], out=str(run), preset="tiny", steps=200,
                            batch_size=2, device="cpu", checkpoint_every=100, sample_every=0)
    runner = JobRunner.from_command(build_command(settings, in_slicer=False), grace_s=120).start()
    events, longest = _poll_until(runner, lambda ev: any(e["event"] == "progress" and e.get("phase") == "train"
                                                         for e in ev), timeout=300)
    assert longest < 0.2, f"poll() blocked for {longest:.2f} s"
    assert events[0]["event"] == "start" and events[0]["total"] == 200
    tree = [runner.pid] + [p.pid for p in psutil.Process(runner.pid).children(recursive=True)]

    runner.cancel()  # Stop
    _poll_until(runner, lambda ev: not runner.is_running, timeout=180)
    assert runner.exit_code == EXIT_INTERRUPTED and runner.stopped, runner.log_tail[-10:]
    assert runner.error_message() is None
    for pid in tree:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    checkpoints = sorted((run / "checkpoints").glob("*"))
    assert checkpoints, "stopping did not leave a checkpoint"
    stopped_at = max(e.get("step", 0) for e in runner.events if e["event"] == "progress")
    # the events file holds the same events as stdout
    from CTDiffusionLib.events import read_events

    assert [e["event"] for e in read_events(run / "events.jsonl")][: len(runner.events)] == \
        [e["event"] for e in runner.events]

    # Resume: continues from the checkpoint and runs 2 more steps
    resume = TrainRequest(profile="prostate-ct", data=[str(data)], out=str(run), steps=stopped_at + 2, device="cpu",
                          resume=True)
    runner = JobRunner.from_command(build_command(resume, in_slicer=False)).start()
    events, _ = _poll_until(runner, lambda ev: not runner.is_running, timeout=300)
    assert runner.succeeded, runner.error_message()
    start = next(e for e in events if e["event"] == "start")
    assert start["resumed_from"] and start["step"] >= stopped_at
    assert events[-1]["event"] == "done" and events[-1]["step"] == stopped_at + 2
    assert (run / "model" / "model.json").is_file()


def test_conditional_masks_generate_and_import(tmp_path):
    """Issue 5 end to end: a conditional tiny2d mask model -> the condition vocabulary the Generation section shows
    (model.json) -> generate with a chosen condition and guidance -> segmentation nodes RV/MYO/LV in the scene."""
    slicer = pytest.importorskip("slicer")
    from CTDiffusionLib.requests import GenerateRequest
    from CTDiffusionLib.jobs.commands import model_conditions
    from CTDiffusionLib.scene import core, nodes

    data, run, out = tmp_path / "acdc", tmp_path / "run", tmp_path / "gen"
    for settings in (PhantomsRequest(profile="cardiac-masks", num=6, out=str(data), seed=2, size=(64, 64, 4)),
                     TrainRequest(profile="cardiac-masks", data=[str(data)], out=str(run), preset="tiny2d", steps=2,
                                  batch_size=4, conditions=("group", "phase"), device="cpu", sample_every=0)):
        r = JobRunner.from_command(build_command(settings, in_slicer=False)).start()
        assert r.wait(timeout=300) and r.succeeded, r.error_message()
    conditions = model_conditions(run)
    assert set(conditions) == {"group", "phase"} and "ED" in conditions["phase"] and conditions["group"]
    choice = {"group": conditions["group"][0], "phase": "ED"}
    generate = GenerateRequest(model=str(run), num=2, out=str(out), sampler="ddim", steps=3, seed=1, condition=choice,
                               guidance_scale=2.0, device="cpu")
    r = JobRunner.from_command(build_command(generate, in_slicer=False)).start()
    assert r.wait(timeout=300) and r.succeeded, r.error_message()
    samples = nodes.list_generated(out)
    assert [s.sidecar.get("condition") for s in samples] == [choice, choice]
    app = core.boot_core_application(slicer.vtkMRMLScene())
    try:
        segs = nodes.import_generated(out)
        assert len(segs) == 2 and all(s.IsA("vtkMRMLSegmentationNode") for s in segs)
        seg = segs[0].GetSegmentation()
        assert sorted(seg.GetSegment(seg.GetNthSegmentID(i)).GetName() for i in range(seg.GetNumberOfSegments())) \
            == ["LV", "MYO", "RV"]
        assert segs[0].GetAttribute("CTDiffusion.condition")
    finally:
        core.release_core_application()


def _python_slicer(tmp_path):
    """SLICER_HOME with bin/PythonSlicer = the launcher stand-in (runs the interpreter as its child, does not
    forward SIGTERM), so build_command(in_slicer=True) takes the same path as inside Slicer."""
    import os
    import stat
    import sys
    from pathlib import Path

    home = tmp_path / "Slicer"
    (home / "bin").mkdir(parents=True)
    exe = home / "bin" / "PythonSlicer"
    source = (Path(__file__).parent / "launcher_standin.py").read_text(encoding="utf-8")
    exe.write_text(f"#!{sys.executable}\n{source}", encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    assert os.access(exe, os.X_OK)
    return home


def _last_step(runner):
    return max((e.get("step") or 0 for e in runner.events if e["event"] == "progress"), default=0)


def test_stop_and_blocking_stop_through_the_launcher_leave_checkpoints(tmp_path, monkeypatch):
    """Inside Slicer the child is PythonSlicer (a launcher that does not forward SIGTERM). Stop (non-blocking) and
    the blocking stop of scene close / quit must both reach the trainer: a checkpoint at the step where it stopped,
    exit 130 reported by the engine, no process left."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no real PythonSlicer on PATH
    home = _python_slicer(tmp_path)
    data = tmp_path / "phantoms"
    r = JobRunner.from_command(build_command(PhantomsRequest(profile="prostate-ct", num=3, out=str(data), seed=1,
                                                             size=(48, 48, 12)), in_slicer=False)).start()
    assert r.wait(timeout=120) and r.succeeded, r.error_message()
    run = tmp_path / "run"
    for attempt, how in enumerate(("stop", "blocking")):
        settings = TrainRequest(profile="prostate-ct", data=[str(data)], out=str(run), preset="tiny", steps=5000,
                                batch_size=2, device="cpu", checkpoint_every=100000, sample_every=0, resume=attempt > 0)
        command = build_command(settings, in_slicer=True, slicer_home=str(home))
        assert command.argv[0] == str(home / "bin" / "PythonSlicer")
        runner = JobRunner.from_command(command).start()
        _poll_until(runner, lambda ev: sum(e["event"] == "progress" and e.get("phase") == "train" for e in ev) >= 2,
                    timeout=300)
        launcher, worker = runner.pid, runner.worker_pid
        assert worker and worker != launcher and psutil.Process(worker).ppid() == launcher
        tree = [launcher, worker] + [p.pid for p in psutil.Process(worker).children(recursive=True)]
        before = _last_step(runner)
        if how == "stop":
            runner.cancel()
            _poll_until(runner, lambda ev: not runner.is_running, timeout=300)
        else:
            pumped = []
            runner.cancel(block=True, pump=lambda: pumped.append(1))
            assert pumped
        assert runner.stopped and runner.exit_code == EXIT_INTERRUPTED, runner.log_tail[-10:]
        assert runner.done_event["status"] == "stopped"
        checkpoint = [e for e in runner.events if e["event"] == "checkpoint"][-1]
        assert checkpoint["step"] >= before > 0
        for pid in tree:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
        assert any((run / "checkpoints").glob(f"*{checkpoint['step']:08d}*")), sorted((run / "checkpoints").iterdir())


def test_stop_scenario_of_the_self_test_through_the_launcher(tmp_path, monkeypatch):
    """The function Slicer's self-test runs to stop a training, here through the PythonSlicer stand-in."""
    from CTDiffusionLib.scene.scenario import run_stop_scenario

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    home = _python_slicer(tmp_path)
    result = run_stop_scenario(tmp_path / "work", in_slicer=True, slicer_home=str(home), log=lambda m: None)
    assert result["runner"].argv[0] == str(home / "bin" / "PythonSlicer")
    assert result["checkpoint"]["step"] >= result["stopped_at"] > 0


def test_stop_reaches_the_trainer_when_no_signal_can(tmp_path, monkeypatch):
    """Windows: a GUI parent may be unable to send CTRL_BREAK. With every stop signal lost, Stop still makes the
    trainer checkpoint at the step where it stopped and exit 130, through the run folder's stop-request file; a
    request left over from an earlier job does not stop the next one."""
    from CTDiffusionLib.jobs import runner as runner_module
    from CTDiffusionLib.runfolder import OUTPUT_MARKER, RunFolder

    data = tmp_path / "phantoms"
    phantoms = JobRunner.from_command(build_command(
        PhantomsRequest(profile="prostate-ct", num=3, out=str(data), seed=1, size=(48, 48, 12)),
        in_slicer=False)).start()
    assert phantoms.wait(timeout=120) and phantoms.succeeded, phantoms.error_message()
    run = tmp_path / "run"  # a folder of ours (marked) where an earlier job left its stop request
    run.mkdir()
    (run / OUTPUT_MARKER).write_text('{"format": "ctdiffusion-output/1", "command": "train"}')
    RunFolder(run).stop_request.write_text("left by an earlier job\n")
    monkeypatch.setattr(runner_module, "send_stop_request", lambda pid, group=None: None)  # signals never arrive

    settings = TrainRequest(profile="prostate-ct", data=[str(data)], out=str(run), preset="tiny", steps=5000,
                            batch_size=2, device="cpu", checkpoint_every=100000, sample_every=0)
    runner = JobRunner.from_command(build_command(settings, in_slicer=False), grace_s=600).start()
    _poll_until(runner, lambda ev: sum(e["event"] == "progress" and e.get("phase") == "train" for e in ev) >= 2,
                timeout=300)
    assert runner.is_running  # the stale request was cleared, not obeyed
    worker, before = runner.worker_pid, _last_step(runner)
    runner.cancel()
    _poll_until(runner, lambda ev: not runner.is_running, timeout=300)  # well inside the 600 s kill deadline
    assert runner.stopped and runner.exit_code == EXIT_INTERRUPTED, runner.log_tail[-10:]
    checkpoint = [e for e in runner.events if e["event"] == "checkpoint"][-1]
    assert checkpoint["step"] >= before > 0
    assert RunFolder(run).checkpoint(checkpoint["step"]).is_file()
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
