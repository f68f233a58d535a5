"""The end-to-end self-test scenario, shared by Slicer's self-test (CTDiffusionTest) and pytest on slicer-core:

phantoms (child process) -> loaded into the scene in a study -> exported to a run folder -> a few training
steps on CPU in a child process (events polled, loss curve filled) -> two volumes generated with the first
phantom as geometry reference -> imported as nodes in the synthetic folder -> side-by-side comparison.
Every step asserts what it produced; the returned dict lets callers check more.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from CTDiffusionLib.jobs import JobRunner, build_command
from CTDiffusionLib.requests import GenerateRequest, PhantomsRequest, TrainRequest
from CTDiffusionLib.scene.comparison import LAYOUT_ID, REAL_VIEW, SYNTHETIC_VIEW, setup_comparison, \
    slice_composite_node
from CTDiffusionLib.scene.core import get_scene, subject_hierarchy
from CTDiffusionLib.profiles import PROSTATE_CT
from CTDiffusionLib.scene.nodes import SYNTHETIC_FOLDER_NAME, export_nodes, import_generated, \
    list_generated, load_ct_volume, place_in
from CTDiffusionLib.scene.plots import LossCurve
from CTDiffusionLib.runfolder import RunFolder


class ScenarioError(AssertionError):
    pass


def _check(condition, message: str) -> None:
    if not condition:
        raise ScenarioError(message)


def run_job(command, timeout_s: float, pump: Callable[[], None] | None = None, on_event=None) -> JobRunner:
    """Start a child and poll it (never a blocking wait on the child) until it ends or the timeout passes."""
    runner = JobRunner.from_command(command, on_event=on_event).start()
    deadline = time.monotonic() + timeout_s
    while runner.is_running:
        runner.poll()
        if pump is not None:
            pump()
        if time.monotonic() > deadline:
            runner.cancel(block=True, grace_s=5)
            raise ScenarioError(f"{command.description} did not finish within {timeout_s:.0f} s")
        time.sleep(0.05)
    runner.take_log()
    if not runner.succeeded:
        raise ScenarioError(f"{command.description} failed: {runner.error_message()}\n"
                            + "\n".join(runner.log_tail[-20:]))
    return runner


def _bounds(node) -> list[float]:
    b = [0.0] * 6
    node.GetRASBounds(b)
    return [round(v, 3) for v in b]


def _bounds_close(a, b, tol: float) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(_bounds(a), _bounds(b)))


def _same_axes(a, b) -> bool:
    import vtk

    ma, mb = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    a.GetIJKToRASDirectionMatrix(ma)
    b.GetIJKToRASDirectionMatrix(mb)
    return all(abs(ma.GetElement(i, j) - mb.GetElement(i, j)) < 1e-4 for i in range(3) for j in range(3))


def run_selftest_scenario(work_dir: str | Path, scene=None, steps: int = 4, num_generate: int = 2,
                          size=(48, 48, 12), in_slicer: bool | None = None, timeout_s: float = 600,
                          log: Callable[[str], None] = print, pump: Callable[[], None] | None = None) -> dict:
    scene = get_scene(scene)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {}

    log("Writing phantom CT volumes ...")
    phantoms = work / "phantoms"
    run_job(build_command(PhantomsRequest(profile=PROSTATE_CT.name, num=3, out=str(phantoms), seed=1, size=size),
                          in_slicer=in_slicer), timeout_s, pump)
    files = sorted(p for p in phantoms.iterdir() if p.name.endswith((".nii.gz", ".nii", ".nrrd")))
    _check(len(files) == 3, f"expected 3 phantom volumes in {phantoms}, found {len(files)}")

    log("Loading phantoms into a study ...")
    sh = subject_hierarchy(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "CTDiffusion phantom patient")
    study = sh.CreateStudyItem(patient, "CTDiffusion phantom study")
    real_nodes = []
    for f in files:
        node = load_ct_volume(f, scene=scene)
        place_in(node, study, scene)
        real_nodes.append(node)
    _check(all(n.IsA("vtkMRMLScalarVolumeNode") for n in real_nodes), "phantoms did not load as scalar volumes")
    result["real_nodes"] = real_nodes

    log("Exporting the selected nodes to the run folder ...")
    run_dir = work / "run"
    manifest = export_nodes(real_nodes, work / "data", PROSTATE_CT.name)
    _check(len(manifest["cases"]) == 3, "export wrote the wrong number of cases")

    log(f"Training {steps} steps on CPU in a child process ...")
    curve = LossCurve(scene)
    train = build_command(TrainRequest(profile=PROSTATE_CT.name, data=[str(work / "data")], out=str(run_dir),
                                       preset="tiny", steps=steps, batch_size=2, device="cpu"), in_slicer=in_slicer)
    runner = run_job(train, timeout_s, pump, on_event=curve.add)
    kinds = [e.get("event") for e in runner.events]
    _check("start" in kinds and kinds[-1] == "done", f"unexpected training events: {kinds}")
    _check(curve.rows() >= 1, "no loss values arrived from the training events")
    _check(RunFolder(run_dir).bundle.meta.is_file(), "training wrote no model bundle")
    result.update(train_runner=runner, loss_curve=curve, run_dir=run_dir)

    log(f"Generating {num_generate} volumes ...")
    reference = work / "data" / manifest["cases"][0]["file"]
    out = work / "generated"
    gen = build_command(GenerateRequest(model=str(run_dir), num=num_generate, out=str(out), sampler="ddim", steps=4,
                                        seed=0, reference=str(reference), device="cpu"), in_slicer=in_slicer)
    run_job(gen, timeout_s, pump)
    samples = list_generated(out)
    _check(len(samples) == num_generate, f"expected {num_generate} generated volumes, found {len(samples)}")

    log("Importing results and setting up the comparison ...")
    synthetic = import_generated(out, scene=scene, beside=real_nodes[0])
    _check(len(synthetic) == num_generate, "not every generated volume became a node")
    ref = real_nodes[0]
    for node in synthetic:
        _check(node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"),
               f"{node.GetName()} is a {node.GetClassName()}, expected a scalar volume")
        _check(node.GetImageData() is not None, f"{node.GetName()} has no image data")
        # The reference sets the geometry: the engine resamples onto the reference's exact voxel grid.
        _check(_same_axes(node, ref), f"{node.GetName()} is not oriented like the reference volume")
        _check(node.GetImageData().GetDimensions() == ref.GetImageData().GetDimensions()
               and all(abs(a - b) < 1e-4 for a, b in zip(node.GetSpacing(), ref.GetSpacing())),
               f"{node.GetName()} is not on the reference's voxel grid")
        tol = max(max(node.GetSpacing()), max(ref.GetSpacing()))
        _check(_bounds_close(node, ref, tol), f"{node.GetName()} does not cover the reference's field of view: "
                                              f"{_bounds(node)} vs {_bounds(ref)}")
        display = node.GetDisplayNode()
        _check(display is not None and not display.GetAutoWindowLevel(), "synthetic CT has no fixed window/level")
    folder = sh.GetItemParent(sh.GetItemByDataNode(synthetic[0]))
    _check(sh.GetItemName(folder) == SYNTHETIC_FOLDER_NAME, "synthetic nodes are not in the synthetic folder")
    _check(sh.GetItemParent(folder) == study, "the synthetic folder is not beside the real study's volumes")

    comparison = setup_comparison(real_nodes[0], synthetic[0], scene=scene)
    _check(comparison.layout.GetViewArrangement() == LAYOUT_ID, "the comparison layout is not shown")
    real_comp, synth_comp = slice_composite_node(scene, REAL_VIEW), slice_composite_node(scene, SYNTHETIC_VIEW)
    _check(real_comp.GetBackgroundVolumeID() == real_nodes[0].GetID(), "real view does not show the real volume")
    _check(synth_comp.GetBackgroundVolumeID() == synthetic[0].GetID(), "synthetic view does not show the sample")
    _check(real_comp.GetLinkedControl() and synth_comp.GetLinkedControl(), "views are not linked")
    d1, d2 = real_nodes[0].GetDisplayNode(), synthetic[0].GetDisplayNode()
    _check((d1.GetWindow(), d1.GetLevel()) == (d2.GetWindow(), d2.GetLevel()), "window/level differ between views")
    result.update(synthetic_nodes=synthetic, comparison=comparison, generated_dir=out, study=study,
                  synthetic_folder=folder)
    log("Scenario passed.")
    return result


def run_stop_scenario(work_dir: str | Path, in_slicer: bool | None = None, slicer_home: str | None = None,
                      timeout_s: float = 600, log: Callable[[str], None] = print,
                      pump: Callable[[], None] | None = None) -> dict:
    """Stop a running training the way the module does (inside Slicer: through the PythonSlicer launcher, which
    does not forward signals) and check the trainer saved a checkpoint at the step where it stopped and that no
    process of the job is left."""
    work = Path(work_dir)
    data, run_dir = work / "stop-phantoms", work / "stop-run"
    log("Writing phantom CT volumes for the stop test ...")
    run_job(build_command(PhantomsRequest(profile=PROSTATE_CT.name, num=2, out=str(data), seed=3, size=(48, 48, 12)),
                          in_slicer=in_slicer, slicer_home=slicer_home), timeout_s, pump)
    log("Starting a long training and stopping it ...")
    train = build_command(TrainRequest(profile=PROSTATE_CT.name, data=[str(data)], out=str(run_dir), preset="tiny",
                                       steps=100000, batch_size=2, device="cpu", checkpoint_every=100000,
                                       sample_every=0),
                          in_slicer=in_slicer, slicer_home=slicer_home)
    runner = JobRunner.from_command(train).start()
    deadline = time.monotonic() + timeout_s
    while runner.is_running and sum(e.get("event") == "progress" for e in runner.events) < 2:
        runner.poll()
        if pump is not None:
            pump()
        if time.monotonic() > deadline:
            runner.kill()
            raise ScenarioError("the training did not report progress in time:\n" + "\n".join(runner.log_tail[-20:]))
        time.sleep(0.05)
    _check(runner.is_running, "the training ended before it could be stopped:\n" + "\n".join(runner.log_tail[-20:]))
    _check(runner.worker_pid is not None, "the engine did not report its process id in its start event")
    stopped_at = max(e.get("step") or 0 for e in runner.events if e.get("event") == "progress")
    pids = {runner.pid, runner.worker_pid}
    runner.cancel(block=True, pump=pump)
    _check(runner.stopped and runner.exit_code == 130,
           f"the training did not stop cleanly (exit code {runner.exit_code}):\n" + "\n".join(runner.log_tail[-20:]))
    checkpoints = [e for e in runner.events if e.get("event") == "checkpoint"]
    _check(checkpoints and checkpoints[-1].get("step", -1) >= stopped_at,
           f"no checkpoint at the step where the training stopped ({stopped_at})")
    _check(Path(checkpoints[-1]["path"]).is_file(), f"{checkpoints[-1]['path']} was reported but is not on disk")
    from CTDiffusionLib.jobs.runner import _pid_alive

    left = [pid for pid in pids if pid and _pid_alive(pid)]
    _check(not left, f"processes left behind after stopping: {left}")
    log(f"Stopped at step {stopped_at}; checkpoint {checkpoints[-1]['path']}.")
    return {"runner": runner, "stopped_at": stopped_at, "checkpoint": checkpoints[-1], "run_dir": run_dir}
