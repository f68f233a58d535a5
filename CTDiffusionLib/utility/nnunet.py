"""`utility --segmenter nnunet`: the benchmark's three arms trained and applied by nnU-Net v2 instead of the built-in
MONAI recipe. nnU-Net is an optional dependency (`pip install nnunetv2 -c constraints.txt`); nothing else needs it.

For each arm, its training pairs (already on the benchmark's working grid, volumes.py) are written as an nnU-Net raw
dataset (data/pairs.write_nnunet_pairs) and planned/preprocessed once; then for each seed nnU-Net trains the
3d_fullres configuration on fold "all" (every training case, no hold-out: the held-out cases are the benchmark's own
test pairs) with a short trainer, and predicts the test CTs. The predictions are scored by the same code as the
MONAI segmenter's (scoring.py), on the same grid, so the arms, intervals and verdict mean the same.

nnU-Net's folders (nnUNet_raw, nnUNet_preprocessed, nnUNet_results) all live in OUT/nnunet/, set through the
environment of its commands only; each seed trains into its own results folder. nnU-Net takes no seed: the K runs of
an arm differ by nnU-Net's own randomness, so the interval over "seeds" is the spread of repeated trainings.

The commands and flags below are nnunetv2 2.x's, read from MIC-DKFZ/nnUNet at 0e495086 (version 2.8.1):
pyproject.toml [project.scripts] (the entry-point names), nnunetv2/experiment_planning/
plan_and_preprocess_entrypoints.py (plan_and_preprocess_entry: -d, -c, -np, -npfp, --verify_dataset_integrity),
nnunetv2/run/run_training.py (run_training_entry: DATASET CONFIGURATION FOLD -tr -device; -device takes cpu/cuda/mps,
a GPU is chosen with CUDA_VISIBLE_DEVICES), nnunetv2/inference/predict_from_raw_data.py (predict_entry_point: -i -o
-d -c -f -tr -device -npp -nps), nnunetv2/paths.py (the three environment variables), nnunetv2/utilities/
file_path_utilities.py (results/DatasetXXX_NAME/TRAINER__nnUNetPlans__CONFIG/fold_all/), and nnunetv2/training/
nnUNetTrainer/variants/training_length/nnUNetTrainer_Xepochs.py (the short trainers; 250 iterations per epoch in
nnUNetTrainer.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from CTDiffusionLib.errors import InputError, TrainingFailed

EXECUTABLES = ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict")
CONFIGURATION = "3d_fullres"  # the working grid is one 3D grid: nnU-Net's full-resolution 3D U-Net
FOLD = "all"  # train on every case of the arm; the benchmark's test pairs are the hold-out
PLANS = "nnUNetPlans"
ITERATIONS_PER_EPOCH = 250  # nnUNetTrainer.num_iterations_per_epoch
#: the short trainers nnunetv2 ships (nnUNetTrainer_Xepochs.py): epochs -> class name
SHORT_TRAINERS = {1: "nnUNetTrainer_1epoch", 5: "nnUNetTrainer_5epochs", 10: "nnUNetTrainer_10epochs",
                  20: "nnUNetTrainer_20epochs", 50: "nnUNetTrainer_50epochs", 100: "nnUNetTrainer_100epochs",
                  250: "nnUNetTrainer_250epochs", 500: "nnUNetTrainer_500epochs", 750: "nnUNetTrainer_750epochs"}
INSTALL_HINT = "Install it with `pip install nnunetv2 -c constraints.txt`, or leave out --segmenter nnunet."
POLL_S = 1.0  # how often a running nnU-Net command is checked for a stop request


def is_installed() -> bool:
    """nnunetv2 importable AND its three commands on PATH (a package without its scripts cannot run the arms)."""
    return importlib.util.find_spec("nnunetv2") is not None and all(shutil.which(e) for e in EXECUTABLES)


def require_installed() -> None:
    if importlib.util.find_spec("nnunetv2") is None:
        raise InputError("--segmenter nnunet needs nnU-Net v2 (the nnunetv2 package), which is not installed.",
                         INSTALL_HINT)
    missing = [e for e in EXECUTABLES if shutil.which(e) is None]
    if missing:
        raise InputError(f"--segmenter nnunet needs nnU-Net v2's command {missing[0]}, which is not on PATH.",
                         "Activate the environment nnunetv2 is installed in, or " + INSTALL_HINT[0].lower()
                         + INSTALL_HINT[1:])


def short_trainer(iterations: int) -> tuple[str, int]:
    """(trainer class, epochs): the shortest shipped trainer that runs at least `iterations` iterations (the MONAI
    recipe's length), so both segmenters get comparable compute; the longest when none does."""
    for epochs, name in sorted(SHORT_TRAINERS.items()):
        if epochs * ITERATIONS_PER_EPOCH >= iterations:
            return name, epochs
    epochs = max(SHORT_TRAINERS)
    return SHORT_TRAINERS[epochs], epochs


def describe(iterations: int, device: str) -> dict:
    """utility.json's "segmenter" entry for nnU-Net."""
    from importlib.metadata import PackageNotFoundError, version

    trainer, epochs = short_trainer(iterations)
    try:
        found = version("nnunetv2")
    except PackageNotFoundError:
        found = None
    return {"network": "nnU-Net v2", "nnunetv2_version": found, "configuration": CONFIGURATION, "fold": FOLD,
            "plans": PLANS, "trainer": trainer, "epochs": epochs, "iterations": epochs * ITERATIONS_PER_EPOCH,
            "monai_recipe_iterations": int(iterations), "device": device,
            "seeds_note": "nnU-Net takes no seed: each 'seed' is one independent nnU-Net training of the arm"}


# ------------------------------------------------------------------------------------------- files for nnU-Net
def _image(array: np.ndarray, spacing_zyx) -> "sitk.Image":
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing_zyx[::-1]])
    return image


def write_dataset(folder: Path, cases: list, structures: list) -> Path:
    """An arm's training pairs (SegCases on the working grid) as an nnU-Net raw dataset. Case ids are new
    (case_0000 ...): a real and a synthetic case may share a name."""
    from CTDiffusionLib.data.pairs import write_nnunet_pairs

    pairs = ((f"case_{k:04d}", _image(c.image.astype(np.float32), c.spacing_zyx),
              _image(c.labels.astype(np.uint8), c.spacing_zyx)) for k, c in enumerate(cases))
    return write_nnunet_pairs(folder, pairs, structures, extra={"training_cases": [c.name for c in cases]})


def write_test_set(folder: Path, test: list) -> Path:
    """The held-out CTs as nnU-Net test images (imagesTs/test_0000_0000.nii.gz ...), with their labels in labelsTs
    for whoever wants nnU-Net's own evaluation; nnU-Net never trains on this folder."""
    import SimpleITK as sitk

    for sub in ("imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for k, c in enumerate(test):
        sitk.WriteImage(_image(c.image.astype(np.float32), c.spacing_zyx),
                        str(folder / "imagesTs" / f"test_{k:04d}_0000.nii.gz"))
        sitk.WriteImage(_image(c.labels.astype(np.uint8), c.spacing_zyx),
                        str(folder / "labelsTs" / f"test_{k:04d}.nii.gz"))
    return folder / "imagesTs"


def read_predictions(folder: Path, test: list) -> list[np.ndarray]:
    """nnU-Net's label maps for the test CTs, in test order; TrainingFailed when one is missing or off-grid."""
    import SimpleITK as sitk

    out = []
    for k, c in enumerate(test):
        path = folder / f"test_{k:04d}.nii.gz"
        if not path.is_file():
            raise TrainingFailed(f"nnUNetv2_predict wrote no prediction {path} for the test case {c.name}.",
                                 f"See the nnU-Net log in {folder.parent.parent / 'logs'}.")
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        if labels.shape != c.labels.shape:
            raise TrainingFailed(f"nnU-Net's prediction {path} has the shape {labels.shape}, not the test CT's "
                                 f"{c.labels.shape}.", "Check the nnU-Net version (2.x is supported).")
        out.append(labels.astype(np.uint8))
    return out


# ------------------------------------------------------------------------------------------------- commands
class NnUNet:
    """nnU-Net's commands with their folders inside `work` (OUT/nnunet): raw/, preprocessed/, results/SEED/,
    predictions/, logs/."""

    def __init__(self, work: Path, device: str, stop=None):
        import torch

        self.work, self.stop = Path(work), stop
        dev = torch.device(device)
        self.device = dev.type
        self.env = {**os.environ, "nnUNet_raw": str(self.work / "raw"),
                    "nnUNet_preprocessed": str(self.work / "preprocessed")}
        if dev.type == "cuda" and dev.index is not None:  # nnU-Net's -device takes no index
            self.env["CUDA_VISIBLE_DEVICES"] = str(dev.index)
        self.env.setdefault("nnUNet_n_proc_DA", str(max(1, os.cpu_count() or 1)))
        (self.work / "logs").mkdir(parents=True, exist_ok=True)

    def results(self, seed: int) -> Path:
        return self.work / "results" / f"seed_{seed}"

    def run(self, command: list[str], log_name: str, results: Path | None = None) -> None:
        """One nnU-Net command; its output goes to logs/LOG_NAME.log. A stop request ends it (and the benchmark)."""
        env = dict(self.env)
        env["nnUNet_results"] = str(results or self.work / "results" / "unused")
        log_path = self.work / "logs" / f"{log_name}.log"
        with open(log_path, "w", encoding="utf-8") as log_file:
            # its own process group: nnU-Net starts worker processes, and a stop must end them too
            proc = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                    start_new_session=os.name == "posix")
            try:
                while proc.poll() is None:
                    if self.stop is not None and self.stop.requested:
                        _end(proc, signal.SIGTERM)
                        proc.wait(timeout=60)
                        self.stop.check("The utility benchmark was stopped; no utility.json was written.",
                                        "Run it again to measure.")
                    time.sleep(POLL_S)
            finally:
                if proc.poll() is None:
                    _end(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
                    proc.wait()
        if proc.returncode != 0:
            text = log_path.read_text(encoding="utf-8", errors="replace")
            tail = text.strip().splitlines()[-1:] or [""]
            # the failed run's folder goes away (output_folder): the log is kept where the user can read it
            fd, kept = tempfile.mkstemp(prefix=f"ctdiffusion-nnunet-{log_name}-", suffix=".log")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"$ {' '.join(command)}\n{text}")
            raise TrainingFailed(f"{command[0]} failed (exit code {proc.returncode}): {tail[0][:300]}",
                                 f"See its whole output in {kept}.")

    def plan_and_preprocess(self, dataset_id: int) -> None:
        self.run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", CONFIGURATION, "-np", "1",
                  "-npfp", "1", "--verify_dataset_integrity"], f"plan_{dataset_id:03d}")

    def train(self, dataset_id: int, trainer: str, seed: int) -> None:
        self.run(["nnUNetv2_train", str(dataset_id), CONFIGURATION, FOLD, "-tr", trainer, "-p", PLANS,
                  "-device", self.device], f"train_{dataset_id:03d}_seed_{seed}", self.results(seed))

    def predict(self, dataset_id: int, trainer: str, seed: int, images: Path, out: Path) -> None:
        self.run(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c",
                  CONFIGURATION, "-f", FOLD, "-tr", trainer, "-p", PLANS, "-device", self.device, "-npp", "1",
                  "-nps", "1"], f"predict_{dataset_id:03d}_seed_{seed}", self.results(seed))


def _end(proc: subprocess.Popen, sig: int) -> None:
    """Signal a command and the workers it started (its process group on POSIX; the process elsewhere)."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        else:
            proc.terminate()
    except ProcessLookupError:  # it ended meanwhile
        pass


def dataset_name(dataset_id: int, arm: str) -> str:
    """nnU-Net's DatasetXXX_NAME ("real+synthetic" -> Dataset003_real_synthetic)."""
    return f"Dataset{dataset_id:03d}_{''.join(ch if ch.isalnum() else '_' for ch in arm)}"


def run_nnunet_arms(cases_by_arm: dict, test: list, structures: list, iterations: int, seeds: list, device: str,
                    work: Path, progress=None, log=None) -> dict:
    """The arms through nnU-Net: plan each arm's dataset once, train and predict once per seed, score as
    arms.run_arms does. Returns {arm: ArmScores}; progress steps once per trained and scored model."""
    from CTDiffusionLib.utility.arms import empty_scores, log_model, score_model

    require_installed()
    nnunet = NnUNet(work, device, getattr(progress, "stop", None))
    trainer, _ = short_trainer(iterations)
    n_classes = len(structures) + 1
    ids = {arm: k for k, arm in enumerate(cases_by_arm, start=1)}
    for arm, cases in cases_by_arm.items():
        write_dataset(nnunet.work / "raw" / dataset_name(ids[arm], arm), cases, structures)
        nnunet.plan_and_preprocess(ids[arm])
    images = write_test_set(nnunet.work / "test", test)
    out = empty_scores(cases_by_arm, len(seeds), len(test), n_classes - 1)
    for i, seed in enumerate(seeds):
        for arm in cases_by_arm:
            t0 = time.time()
            nnunet.train(ids[arm], trainer, seed)
            predictions = nnunet.work / "predictions" / dataset_name(ids[arm], arm) / f"seed_{seed}"
            nnunet.predict(ids[arm], trainer, seed, images, predictions)
            score_model(out[arm], i, test, read_predictions(predictions, test), n_classes)
            log_model(log, "nnU-Net", arm, seed, out[arm], i, t0)
            if progress is not None:
                progress.step(arm, seed, 1, 1)
    return out
