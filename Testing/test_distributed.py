"""Multi-process (torchrun / DDP) training on CPU with the gloo backend.

Two processes with a global batch of 4 (2 per rank) must end with the same weights as one process with a batch of
4 on the same seed and data: every rank draws the same global batch (indices, augmentation, noise, timesteps),
trains on its own half, and DDP averages the gradients. The test fails if the gradients are not all-reduced
(rank 0 would have trained on its half only), if ranks draw different batches, or if a rank trains on the wrong
slice. It also checks that the job speaks with one voice (one event stream: rank 0) and that a checkpoint written by
the 2-process run resumes in a single process to the same weights as a single-process run resumed the same way.

CPU only, tiny preset on 48x48x12 phantoms: about 30-60 s on 2 loaded cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS, EXTRA = 3, 2
GLOBAL_BATCH = 4
# Same maths, different summation order (two half-batch means averaged vs one mean): float32 noise is ~1e-7; a
# real mistake (no gradient averaging, different batches per rank) moves weights by ~lr = 1e-3.
ATOL = 2e-5


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    # fp32: the 2-process run must equal the 1-process one to 2e-5, and bf16 autocast (on by default on CPUs with
    # native bf16) rounds differently for a batch of 2 per process than for one batch of 4
    return ["train", "--amp", "off", "--profile", "prostate-ct", "--data", str(data), "--out", str(out),
            "--preset", "tiny", "--steps", str(STEPS), "--batch-size", str(GLOBAL_BATCH), "--sample-every", "0",
            "--checkpoint-every", "2", "--val-fraction", "0", "--seed", "5", "--device", "cpu", *extra]


def _torchrun_available() -> bool:
    try:
        import torch.distributed as dist

        return dist.is_available() and dist.is_gloo_available()
    except Exception:
        return False


def _latest_checkpoint(run: Path) -> dict:
    import torch

    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    assert ckpts, f"no checkpoint in {run}"
    return torch.load(ckpts[-1], map_location="cpu", weights_only=True)


def _bundle(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _events(path: Path) -> list[dict]:
    from CTDiffusionLib.events import read_events

    return list(read_events(path))


def _in_process(args: list[str]) -> int:
    """Run the CLI in this process on one thread (the torchrun job may be using the other core)."""
    import torch

    from CTDiffusionLib.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(args)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not _torchrun_available(), reason="torch.distributed with gloo is not available")
def test_two_process_training_matches_one_process_and_resumes(tmp_path):
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    data = write_phantom_dataset("prostate-ct", 4, tmp_path / "ct", seed=2, size_xyz=(48, 48, 12))
    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "CTDiffusionLib", *_train_args(data, ddp_run, "--events")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the single-process reference trains meanwhile, in this process
        assert _in_process(_train_args(data, single_run)) == 0
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{stderr[-4000:]}"

    # -- one voice: rank 0 alone writes events (stdout with --events, and the run's events.jsonl)
    from CTDiffusionLib.events import parse_event_line

    streamed = [e for e in (parse_event_line(line) for line in stdout.splitlines()) if e]
    assert [e["event"] for e in streamed].count("start") == 1, "every rank emitted a start event"
    assert [e["event"] for e in streamed].count("done") == 1, "every rank emitted a done event"
    assert streamed[-1]["event"] == "done", "a done event came before the job was finished"
    logged = _events(ddp_run / "events.jsonl")
    assert [e["event"] for e in logged] == [e["event"] for e in streamed]
    assert logged[0]["world_size"] == 2 and logged[-1]["step"] == STEPS
    assert sorted(p.name for p in ddp_run.rglob("events*.jsonl")) == ["events.jsonl"]
    assert stderr.count("training prostate-ct/tiny on cpu") == 1, "every rank logged the start line"
    assert not list(ddp_run.rglob("*.tmp")) and not list(ddp_run.rglob("*.tmp.npz"))

    # -- same weights as one process with the same global batch
    ddp_state, single_state = _latest_checkpoint(ddp_run), _latest_checkpoint(single_run)
    assert ddp_state["step"] == single_state["step"] == STEPS
    init = _init_weights(single_run)
    moved = _max_diff(single_state["model"], init)
    assert moved > 50 * ATOL, f"training barely moved the weights ({moved}); the comparison would prove nothing"
    diff = _max_diff(ddp_state["model"], single_state["model"])
    print(f"max abs(w_2proc - w_1proc) = {diff:.3g} after {STEPS} steps (weights moved up to {moved:.3g})")
    assert diff < ATOL, f"2-process weights differ from 1-process weights by {diff} (moved {moved})"
    assert _max_diff(ddp_state["optimizer"]["state"][0], single_state["optimizer"]["state"][0]) < ATOL
    assert _max_diff(_bundle(ddp_run), _bundle(single_run)) < ATOL

    # -- a 2-process checkpoint resumes in one process, exactly like a 1-process checkpoint does
    for run in (ddp_run, single_run):
        assert _in_process(["train", "--profile", "prostate-ct", "--out", str(run), "--resume",
                            "--steps", str(STEPS + EXTRA), "--device", "cpu"]) == 0
    resumed = [e for e in _events(ddp_run / "events.jsonl") if e["event"] == "start"][-1]
    assert resumed["step"] == STEPS and resumed["world_size"] == 1
    assert resumed["resumed_from"].endswith(f"step_{STEPS:08d}.pt")
    a, b = _latest_checkpoint(ddp_run), _latest_checkpoint(single_run)
    assert a["step"] == b["step"] == STEPS + EXTRA
    diff = _max_diff(a["model"], b["model"])
    assert diff < ATOL, f"resumed weights differ by {diff}"


def _init_weights(run: Path) -> dict:
    """The step-0 weights of a run (same seed -> same initialisation), rebuilt from its config."""
    import torch

    from CTDiffusionLib.models.factory import build_model

    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    torch.manual_seed(int(config["training"]["seed"]))
    return {k: v.detach().clone() for k, v in build_model(config["model"]).state_dict().items()}


def test_global_batch_must_divide_over_ranks(tmp_path, monkeypatch):
    """An uneven split would weight the ranks' samples unequally (and batch 1 would leave rank 1 nothing).

    Checked in one process with a pretend 2-rank group: the refusal comes before any collective call or file.
    """
    from CTDiffusionLib.data.phantoms import write_phantom_dataset
    from CTDiffusionLib.runtime import Distributed
    from CTDiffusionLib.training import trainer

    monkeypatch.setattr(trainer, "init_distributed", lambda device: Distributed(rank=0, world_size=2))
    monkeypatch.setattr(trainer, "_barrier", lambda dist: None)
    data = write_phantom_dataset("prostate-ct", 2, tmp_path / "ct", seed=2, size_xyz=(48, 48, 12))
    out = tmp_path / "run"
    args = _train_args(data, out)
    args[args.index("--batch-size") + 1] = "3"
    assert _in_process(args) == 2
    assert not out.exists(), "a refused run left a half-written folder behind"


# ---------------------------------------------------------------- faults under torchrun (CPU, gloo, 2 processes)
def _torchrun(tmp_path: Path, args: list[str], extra_env: dict | None = None, site: str | None = None,
              timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `python -m CTDiffusionLib ARGS` as a 2-process torchrun job. `site` is Python run at start-up in every
    rank (a sitecustomize module): how a test makes one rank's step slow without hooks in the engine."""
    paths = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    if site:
        site_dir = tmp_path / "site"
        site_dir.mkdir()
        (site_dir / "sitecustomize.py").write_text(site)
        paths.insert(0, str(site_dir))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths), **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "CTDiffusionLib", *args]
    try:
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # subprocess.run kills the job; the ranks hung
        raise AssertionError(f"the 2-process job hung for {timeout} s:\n{(exc.stderr or b'')[-3000:]}") from None


@pytest.mark.skipif(not _torchrun_available(), reason="torch.distributed with gloo is not available")
def test_rank0_preprocessing_failure_ends_every_rank_with_the_same_error(tmp_path):
    """Rank 0 preprocesses while the others wait; an unreadable file there must end both ranks with its message
    (before: rank 1 waited at the barrier until the collective timeout)."""
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    data = write_phantom_dataset("prostate-ct", 3, tmp_path / "ct", seed=2, size_xyz=(48, 48, 12))
    broken = sorted(p for p in Path(data).rglob("*.nii.gz"))[0]
    broken.write_bytes(b"this is not a NIfTI file")
    done = _torchrun(tmp_path, _train_args(data, tmp_path / "run"), timeout=180)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:") and broken.name in line]
    assert len(errors) == 2, f"expected the same error from both ranks, got:\n{done.stderr[-3000:]}"
    assert errors[0] == errors[1]


@pytest.mark.skipif(not _torchrun_available(), reason="torch.distributed with gloo is not available")
def test_a_slow_checkpoint_save_does_not_hit_the_collective_timeout(tmp_path):
    """Training collectives time out after 5 s here; rank 0 takes 12 s per checkpoint. Rank 1 must wait for it on
    the long-timeout group instead of running into the next gradient all-reduce and timing out."""
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    data = write_phantom_dataset("prostate-ct", 2, tmp_path / "ct", seed=2, size_xyz=(48, 48, 12))
    slow_save = (
        "import os, time\n"
        "if os.environ.get('RANK') == '0':\n"
        "    from CTDiffusionLib.training import trainer\n"
        "    original = trainer.Trainer.save\n"
        "    def slow(self):\n"
        "        time.sleep(12)\n"
        "        return original(self)\n"
        "    trainer.Trainer.save = slow\n")
    args = _train_args(data, tmp_path / "run")
    args[args.index("--checkpoint-every") + 1] = "1"
    done = _torchrun(tmp_path, args, {"CTDIFFUSION_COLLECTIVE_TIMEOUT_S": "5"}, site=slow_save)
    assert done.returncode == 0, done.stderr[-4000:]
    assert len(list((tmp_path / "run" / "checkpoints").glob("step_*.pt"))) >= 1


def test_a_fixed_cuda_device_under_torchrun_is_an_input_error(monkeypatch):
    """Every rank would take the same GPU (NCCL then fails with a duplicate-GPU error); refuse it up front."""
    from CTDiffusionLib.errors import InputError
    from CTDiffusionLib.runtime import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(InputError, match="--device cuda:1 cannot be used with torchrun"):
        init_distributed("cuda:1")


@pytest.mark.skipif(not _torchrun_available(), reason="torch.distributed with gloo is not available")
def test_a_minutes_budget_ends_every_rank_at_the_same_step(tmp_path):
    """Only rank 0 measures the speed; the length it fixes (and a deadline cut) reaches every rank at an agreed
    step. Ranks that disagreed would leave one waiting in a gradient all-reduce until the job times out."""
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    data = write_phantom_dataset("prostate-ct", 2, tmp_path / "ct", seed=2, size_xyz=(48, 48, 12))
    args = _train_args(data, tmp_path / "run")
    args[args.index("--steps"):args.index("--steps") + 2] = ["--minutes", "0.15"]
    done = _torchrun(tmp_path, args, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    from CTDiffusionLib.runfolder import read_config

    training = read_config(tmp_path / "run")["training"]
    # rank 0 measured the speed and fixed the length (logged once), and that length is what every rank ran
    fixed = [line for line in done.stderr.splitlines() if "time budget:" in line and "steps fit" in line]
    assert len(fixed) == 1, done.stderr[-3000:]
    assert training["lr_decay_from"] % 10 == 0  # decided at a step where the ranks vote (every SYNC_EVERY)
    assert _latest_checkpoint(tmp_path / "run")["step"] == training["steps"]
    finished = [e for e in _events(tmp_path / "run" / "events.jsonl") if e["event"] == "done"]
    assert [e["step"] for e in finished] == [training["steps"]]
