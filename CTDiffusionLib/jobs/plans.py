"""Where the Slicer module's jobs read and write, decided outside the GUI: run-folder names, the folders nodes are
exported to, which data a training uses, which conditions a conditional model learns, where generated volumes
and quality reports go. Stdlib only; every function is a plain decision a test can check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from CTDiffusionLib.jobs.commands import can_resume, run_data_sources
from CTDiffusionLib.profiles import get_profile


def _stamp(now: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now))


def unique_folder(path: Path) -> Path:
    """`path`, or path-2, path-3 ... when it exists (two runs started within the same second)."""
    candidate, n = Path(path), 1
    while candidate.exists() or candidate.with_name(candidate.name + "-data").exists():
        n += 1
        candidate = Path(path).with_name(f"{Path(path).name}-{n}")
    return candidate


def new_run_folder(runs_folder: str | Path, profile: str, now: float | None = None) -> Path:
    """RUNS/<profile>-YYYYmmdd-HHMMSS for a new training run."""
    return unique_folder(Path(runs_folder) / f"{profile}-{_stamp(now)}")


def exported_data_folder(run_dir: str | Path) -> Path:
    """Where the scene's nodes are written for a run to train on: next to the run, RUN-data."""
    run_dir = Path(run_dir)
    return run_dir.parent / (run_dir.name + "-data")


def training_conditions(profile: str, conditioned: bool) -> tuple[str, ...] | None:
    """--conditions for a training: the conditions the profile's data provides (ACDC Info.cfg: pathology group,
    cardiac phase) when the user asked for a conditional model."""
    return (get_profile(profile).condition_keys or None) if conditioned else None


@dataclass(frozen=True)
class TrainingSource:
    """What a training reads: `data` (folders/files) as they are, or `export_to` to fill from scene nodes first."""

    run_dir: Path
    data: list[str]
    export_to: Path | None = None


def training_source(source_mode: str, source_folder: str, node_count: int, runs_folder: str | Path, profile: str,
                    resume_run: str | Path | None = None, now: float | None = None) -> TrainingSource:
    """Which run folder and which data a Start/Resume uses. Raises ValueError with the sentence to show."""
    if resume_run is not None:
        if not resume_run or not can_resume(resume_run):
            raise ValueError("There is no run with a checkpoint to resume in the chosen folder.")
        data = run_data_sources(resume_run)
        if not data:
            raise ValueError(f"{Path(resume_run) / 'config.json'} does not say where the run's data is.")
        return TrainingSource(Path(resume_run), data)
    run_dir = new_run_folder(runs_folder, profile, now)
    if source_mode == "folder":
        if not source_folder:
            raise ValueError("Choose a data folder.")
        return TrainingSource(run_dir, [str(source_folder)])
    if node_count <= 0:
        raise ValueError("Select the volumes or segmentations to train on.")
    export = exported_data_folder(run_dir)
    return TrainingSource(run_dir, [str(export)], export_to=export)


def resumable_runs(runs_folder: str | Path) -> list[Path]:
    """Run folders under `runs_folder` that can be resumed, newest first (the module's "older run" picker)."""
    folder = Path(runs_folder)
    if not folder.is_dir():
        return []
    runs = [p for p in folder.iterdir() if p.is_dir() and can_resume(p)]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def generation_folder(model_source: str, last_run: str, runs_folder: str | Path, now: float | None = None) -> Path:
    """generated-YYYYmmdd-HHMMSS inside this session's run (model from the run) or the runs folder (a bundle)."""
    base = Path(last_run) if (model_source == "run" and last_run) else Path(runs_folder)
    return unique_folder(base / f"generated-{_stamp(now)}")


@dataclass(frozen=True)
class QualityFolders:
    report: Path
    real_export: Path
    generated_export: Path


def quality_folders(last_run: str, runs_folder: str | Path, now: float | None = None) -> QualityFolders:
    """quality-STAMP (the report) and the folders real/generated nodes are exported to for it."""
    report = unique_folder(Path(last_run or runs_folder) / f"quality-{_stamp(now)}")
    return QualityFolders(report, report.with_name(report.name + "-real"), report.with_name(report.name + "-generated"))


def training_data_for_evaluation(last_run: str) -> str | None:
    """--train for evaluate (novelty against the training set): the run's data when it was one folder."""
    sources = run_data_sources(last_run) if last_run else []
    return sources[0] if len(sources) == 1 else None
