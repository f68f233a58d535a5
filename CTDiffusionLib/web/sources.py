"""What the viewer shows, found from the folders the user named: real cases, generated volumes, the quality
report and a run folder to follow. Read-only by design: nothing here opens a file for writing.

One folder may be a run folder (config.json), a `generate` output folder, a report folder (metrics.json), or a
folder holding those as run/, generated/, report/ (the `demo` layout). --real/--generated/--report override.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from CTDiffusionLib.data.volume_io import image_suffix, strip_image_suffix
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import get_profile
from CTDiffusionLib.runfolder import METRICS, RunFolder, is_temporary, read_json
from CTDiffusionLib.utility.table import RESULT

REPORT_FILE = METRICS
UTILITY_FILE = RESULT  # the downstream benchmark's result (CTDiffusionLib/utility)
#: sub-folders the `demo` command writes; looked at when the named folder is not itself one of them
DEMO_PARTS = {"run": "run", "generated": "generated", "report": "report"}
_WHAT_FOLDER = ("Pass a run folder (with config.json), a folder written by `generate`, a report folder "
                "(with metrics.json), or --real/--generated folders.")


@dataclass(frozen=True)
class Volume:
    """One volume file to show, with its display name."""

    name: str
    path: Path
    series_uid: str | None = None  # a DICOM series inside the folder `path`


@dataclass
class ViewerInputs:
    """The resolved inputs. The volume lists are re-read on demand (a running training adds samples)."""

    profile: str
    real_sources: list[Path]
    generated_dir: Path | None
    report_dir: Path | None
    run_dir: Path | None

    def real_volumes(self) -> list[Volume]:
        if not self.real_sources:
            return []
        from CTDiffusionLib.data.discovery import discover_cases

        cases = discover_cases(self.real_sources, self.profile)
        return [Volume(c.case_id, c.path, c.series_uid) for c in cases]

    def generated_volumes(self) -> list[Volume]:
        return list_volumes(self.generated_dir) if self.generated_dir else []

    @property
    def events_path(self) -> Path | None:
        return RunFolder(self.run_dir).events if self.run_dir else None

    @property
    def metrics_path(self) -> Path | None:
        return self.report_dir / REPORT_FILE if self.report_dir else None

    @property
    def utility_path(self) -> Path | None:
        """The newest utility.json (`ctdiffusion utility`) in the report folder or the run: in the folder itself or
        in a utility-STAMP/ folder inside it (where the Slicer module puts the benchmark of its run)."""
        found = [p for folder in (self.report_dir, self.run_dir) if folder is not None
                 for p in (folder / UTILITY_FILE, *folder.glob(f"utility-*/{UTILITY_FILE}")) if p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def list_volumes(folder: Path) -> list[Volume]:
    """Image files directly in `folder`, sorted by name (generate writes synthetic_0001..., previews step_...)."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and image_suffix(p) and not p.name.startswith(".") and not is_temporary(p))
    return [Volume(strip_image_suffix(p.name), p) for p in files]


def _existing_folder(path: str | Path | None, flag: str) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"The {flag} folder {p} does not exist.", "Check the path.")
    if not p.is_dir():
        raise InputError(f"The {flag} path {p} is not a folder.", _WHAT_FOLDER)
    return p.resolve()


def _sidecar_profile(folder: Path) -> str | None:
    """The profile `generate` recorded in the JSON sidecar of the first volume that has one."""
    for volume in list_volumes(folder):
        sidecar = folder / (volume.name + ".json")
        if sidecar.is_file():
            try:
                profile = json.loads(sidecar.read_text(encoding="utf-8")).get("profile")
            except (OSError, ValueError, AttributeError):
                continue
            if profile:
                return str(profile)
    return None


#: Volumes read to tell the data type of bare folders (label maps or intensities; the rule `evaluate` uses).
PROFILE_PROBE_VOLUMES = 4


def _profile_from_data(folder: Path | None) -> str:
    """Bare folders (no run config, sidecar or report): the profile the data itself shows, as `evaluate` infers
    it (evaluation.inputs.infer_profile); InputError naming the folder when it cannot be told."""
    import SimpleITK as sitk

    from CTDiffusionLib.data.volume_io import read_image
    from CTDiffusionLib.evaluation.inputs import infer_profile

    volumes = list_volumes(folder) if folder is not None else []
    if not volumes:
        raise InputError("The data type of these volumes is unknown (no run config, sidecar or report names it).",
                         "Pass --profile prostate-ct or --profile cardiac-masks.")
    arrays = [sitk.GetArrayFromImage(read_image(v.path, what="volume")) for v in volumes[:PROFILE_PROBE_VOLUMES]]
    return infer_profile(arrays, folder).name


def resolve_inputs(folder=None, *, real=None, generated=None, report=None, profile: str | None = None) -> ViewerInputs:
    """Find what to show; InputError (one sentence naming the path) when there is nothing usable."""
    base = _existing_folder(folder, "run/output")
    real_dir = _existing_folder(real, "--real")
    generated_dir = _existing_folder(generated, "--generated")
    report_dir = _existing_folder(report, "--report")
    if base is None and real_dir is None and generated_dir is None:
        raise InputError("Nothing to show was given.", _WHAT_FOLDER)

    run_dir = None
    if base is not None:
        parts = {key: base / name for key, name in DEMO_PARTS.items() if (base / name).is_dir()}
        run_dir = next((d for d in (base, parts.get("run")) if d and RunFolder(d).is_run()), None)
        if report_dir is None:
            report_dir = next((d for d in (base, parts.get("report")) if d and (d / REPORT_FILE).is_file()), None)
        if generated_dir is None:
            if list_volumes(base) and run_dir != base:
                generated_dir = base
            elif "generated" in parts:
                generated_dir = parts["generated"]
            elif run_dir is not None:
                generated_dir = RunFolder(run_dir).samples  # preview samples of a (running) training
        if run_dir is None and generated_dir is None and report_dir is None:
            raise InputError(f"The folder {base} holds no run (config.json), volumes or report (metrics.json).",
                             _WHAT_FOLDER)

    if generated is not None and not list_volumes(generated_dir):
        raise InputError(f"The --generated folder {generated_dir} holds no volumes.", _WHAT_FOLDER)
    config = RunFolder(run_dir).read_config() if run_dir else {}
    if real_dir is not None:
        real_sources = [real_dir]
    else:  # the run's own training data, where it still exists on this machine
        sources = (config.get("data") or {}).get("sources") or []
        real_sources = [Path(s) for s in sources if Path(s).exists()]

    has_report = report_dir is not None and (report_dir / REPORT_FILE).is_file()
    metrics = read_json(report_dir / REPORT_FILE, "quality report") if has_report else {}
    found = (profile or config.get("profile") or (generated_dir and _sidecar_profile(generated_dir))
             or metrics.get("profile") or _profile_from_data(generated_dir or real_dir))
    inputs = ViewerInputs(get_profile(found).name, real_sources, generated_dir, report_dir, run_dir)
    if real_dir is not None and not inputs.real_volumes():  # discovery raises for unreadable layouts
        raise InputError(f"The --real folder {real_dir} holds no volumes.", _WHAT_FOLDER)
    return inputs
