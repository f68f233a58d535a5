"""Shared, session-scoped test data: small phantom data sets and one tiny trained run per profile.

Training is the slow part on CPU, so each profile trains once and the generation/CLI/evaluation tests reuse it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CT_SIZE = (48, 48, 12)
MASK_SIZE = (64, 64, 6)


def run_cli(*args: str) -> int:
    from CTDiffusionLib.cli import main

    return main([str(a) for a in args])


def phantom_pair_sets(root, sets: dict, size: str) -> dict:
    """{name: folder} of phantom CT + label pairs written by the CLI; `sets` = {name: (cases, seed)}."""
    for name, (num, seed) in sets.items():
        assert run_cli("phantoms", "--profile", "prostate-ct", "--with-labels", "--num", num, "--seed", seed,
                       "--size", size, "--out", root / name) == 0
    return {name: root / name for name in sets}


def stop_after(monkeypatch, last_step: int) -> None:
    """The next training stops as on SIGINT/SIGTERM after `last_step`, on top of whatever train_step is installed."""
    from CTDiffusionLib.training import trainer as trainer_module

    step = trainer_module.Trainer.train_step

    def then_stop(trainer):
        loss = step(trainer)
        if trainer.step == last_step:
            trainer.stop.signalled = True  # what the signal handlers do
        return loss

    monkeypatch.setattr(trainer_module.Trainer, "train_step", then_stop)


@pytest.fixture(scope="session")
def ct_phantoms(tmp_path_factory) -> Path:
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    return write_phantom_dataset("prostate-ct", 5, tmp_path_factory.mktemp("data") / "ct", seed=1, size_xyz=CT_SIZE)


@pytest.fixture(scope="session")
def mask_phantoms(tmp_path_factory) -> Path:
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    return write_phantom_dataset("cardiac-masks", 10, tmp_path_factory.mktemp("data") / "acdc", seed=1,
                                 size_xyz=MASK_SIZE)


@pytest.fixture(scope="session")
def tiny_ct_run(ct_phantoms, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "ct"
    assert run_cli("train", "--profile", "prostate-ct", "--data", ct_phantoms, "--out", run, "--preset", "tiny",
                   "--steps", 6, "--batch-size", 2, "--checkpoint-every", 3, "--sample-every", 0) == 0
    return run


@pytest.fixture(scope="session")
def tiny_mask_run(mask_phantoms, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "masks"
    assert run_cli("train", "--profile", "cardiac-masks", "--data", mask_phantoms, "--out", run, "--preset",
                   "tiny2d", "--steps", 6, "--batch-size", 4, "--checkpoint-every", 3, "--sample-every", 0,
                   "--conditions", "group,phase") == 0
    return run
