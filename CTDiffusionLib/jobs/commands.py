"""What the Slicer module runs in its child process: the interpreter, the environment and the argument list.

Stdlib only. Inside Slicer the child is `PythonSlicer -m CTDiffusionLib ...` with PYTHONPATH pointing at the
folder that holds the installed CTDiffusionLib; anywhere else it is `sys.executable -m CTDiffusionLib ...`.
Every command line is built from a settings object, so the widget never assembles flags by hand and a test can
check each one against the real argument parser (`CTDiffusionLib.cli.build_parser`).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from CTDiffusionLib.runfolder import RunFolder

PACKAGE = "CTDiffusionLib"
#: Folder that holds the CTDiffusionLib package (in Slicer: the extension's qt-scripted-modules folder).
LIBRARY_PARENT = str(Path(__file__).resolve().parents[2])


def in_slicer_application() -> bool:
    """True inside the Slicer desktop application (PythonQt), False in plain Python and under slicer-core."""
    slicer = sys.modules.get("slicer")
    return bool(slicer is not None and getattr(slicer, "app", None) is not None)


def find_python_slicer(slicer_home: str | os.PathLike | None = None, path: str | None = None) -> str | None:
    """The PythonSlicer launcher: on PATH first (Slicer puts its bin folder there), then SLICER_HOME/bin."""
    found = shutil.which("PythonSlicer", path=path)
    if found:
        return found
    if slicer_home:
        for name in ("PythonSlicer.exe", "PythonSlicer"):
            candidate = Path(slicer_home) / "bin" / name
            if candidate.is_file():
                return str(candidate)
    return None


def python_launcher(in_slicer: bool | None = None, slicer_home: str | os.PathLike | None = None,
                    path: str | None = None) -> list[str]:
    """The interpreter (as an argv prefix) that runs `-m CTDiffusionLib` in the child process."""
    if in_slicer is None:
        in_slicer = in_slicer_application()
    if in_slicer:
        launcher = find_python_slicer(slicer_home, path)
        if launcher:
            return [launcher]
        # Slicer without its launcher on PATH (unusual): its own interpreter still runs a script.
    return [sys.executable]


def child_environment(base: Mapping[str, str] | None = None, library_parent: str | None = None,
                      extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the child: PYTHONPATH starts with the folder holding CTDiffusionLib, output unbuffered.

    `base` defaults to this process's environment (inside Slicer that is the launcher-prepared one, which
    PythonSlicer expects).
    """
    env = dict(os.environ if base is None else base)
    parent = library_parent or LIBRARY_PARENT
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != parent]
    env["PYTHONPATH"] = os.pathsep.join([parent, *parts])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.setdefault("PYTHONUTF8", "1")
    if extra:
        env.update(extra)
    return env


def _size(value: Sequence[int] | str | None) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    return "x".join(str(int(v)) for v in value)


def _device_and_events(args: list[str], device: str | None, events: bool) -> list[str]:
    """The tail every engine command shares: the device (auto unless chosen) and the JSON event stream."""
    _opt(args, "--device", device or "auto")
    if events:
        args.append("--events")
    return args


def _opt(args: list[str], flag: str, value) -> None:
    """Append `flag value` unless the value is unset (None or empty)."""
    if value is None or value == "" or value == []:
        return
    if isinstance(value, float):
        value = repr(value)
    args += [flag, str(value)]


@dataclass
class PhantomSettings:
    profile: str
    num: int
    out: str
    seed: int | None = None
    size: Sequence[int] | str | None = None

    def arguments(self) -> list[str]:
        args = ["phantoms", "--profile", self.profile, "--num", str(int(self.num)), "--out", str(self.out)]
        _opt(args, "--seed", self.seed)
        _opt(args, "--size", _size(self.size))
        return args


@dataclass
class TrainSettings:
    profile: str
    data: Sequence[str]
    out: str
    preset: str | None = None
    epochs: int | None = None
    steps: int | None = None
    minutes: float | None = None  # a wall-clock budget instead of a step count
    batch_size: int | None = None
    lr: float | None = None
    schedule: str | None = None  # linear | cosine
    augment: Sequence[str] | str | None = None  # ("zoom", "flip") or "none"
    grid: Sequence[int] | str | None = None
    conditions: Sequence[str] | str | None = None
    checkpoint_every: int | None = None
    sample_every: int | None = None
    seed: int | None = None
    device: str = "auto"
    resume: bool = False
    with_labels: bool = False  # CT + label pairs (train --with-labels)
    structures: str | None = None  # with_labels: --structures spec; None = every structure in the data
    events: bool = True

    def arguments(self) -> list[str]:
        if not self.data:
            raise ValueError("training needs at least one data folder or file")
        if sum(bool(v) for v in (self.epochs, self.steps, self.minutes)) > 1:
            raise ValueError("give one of epochs, steps or minutes")
        args = ["train", "--profile", self.profile, "--data", *[str(d) for d in self.data], "--out", str(self.out)]
        _opt(args, "--preset", self.preset)
        _opt(args, "--epochs", self.epochs or None)
        _opt(args, "--steps", self.steps or None)
        _opt(args, "--minutes", f"{self.minutes:g}" if self.minutes else None)
        _opt(args, "--batch-size", self.batch_size or None)
        _opt(args, "--lr", self.lr or None)
        _opt(args, "--schedule", self.schedule)
        augment = self.augment
        if augment is not None and not isinstance(augment, str):
            augment = ",".join(augment) if augment else "none"
        _opt(args, "--augment", augment)
        _opt(args, "--grid", _size(self.grid))
        conditions = self.conditions
        if conditions is not None and not isinstance(conditions, str):
            conditions = ",".join(conditions)
        _opt(args, "--conditions", conditions)
        _opt(args, "--checkpoint-every", self.checkpoint_every)
        _opt(args, "--sample-every", self.sample_every)
        _opt(args, "--seed", self.seed)
        if self.with_labels:
            args.append("--with-labels")
            _opt(args, "--structures", self.structures)
        if self.resume:
            args.append("--resume")
        return _device_and_events(args, self.device, self.events)


def format_condition(condition: Mapping[str, str] | str | None) -> str | None:
    """{"group": "DCM", "phase": "ED"} -> "group=DCM,phase=ED" (empty values left out)."""
    if condition is None or isinstance(condition, str):
        return condition or None
    text = ",".join(f"{k}={v}" for k, v in condition.items() if v not in (None, ""))
    return text or None


@dataclass
class GenerateSettings:
    model: str
    num: int | None  # None with from_labels (one CT per label map)
    out: str
    sampler: str | None = None  # ddpm | ddim | dpm++
    steps: int | None = None
    seed: int | None = None
    reference: str | None = None
    condition: Mapping[str, str] | str | None = None
    guidance_scale: float | None = None
    batch_size: int | None = None
    from_labels: str | None = None  # a paired run: the CT for this label-map file or folder
    device: str = "auto"
    events: bool = True

    def arguments(self) -> list[str]:
        args = ["generate", "--model", str(self.model)]
        _opt(args, "--num", None if self.num is None else int(self.num))
        args += ["--out", str(self.out)]
        _opt(args, "--from-labels", self.from_labels)
        _opt(args, "--sampler", self.sampler)
        _opt(args, "--steps", self.steps or None)
        _opt(args, "--seed", self.seed)
        _opt(args, "--reference", self.reference)
        condition = format_condition(self.condition)
        _opt(args, "--condition", condition)
        if condition is not None:
            _opt(args, "--guidance-scale", None if self.guidance_scale is None else float(self.guidance_scale))
        _opt(args, "--batch-size", self.batch_size or None)
        return _device_and_events(args, self.device, self.events)


@dataclass
class EvaluateSettings:
    real: str
    generated: str
    out: str
    train: str | None = None
    run: str | None = None
    profile: str | None = None
    device: str = "auto"
    events: bool = True

    def arguments(self) -> list[str]:
        args = ["evaluate", "--real", str(self.real), "--generated", str(self.generated), "--out", str(self.out)]
        _opt(args, "--train", self.train)
        _opt(args, "--run", self.run)
        _opt(args, "--profile", self.profile)
        return _device_and_events(args, self.device, self.events)


@dataclass
class UtilitySettings:
    """`utility`: the downstream benchmark (real / synthetic / real+synthetic segmenters on held-out real pairs)."""

    train: str
    synthetic: str
    test: str
    out: str
    seeds: int | None = None
    ratio: float | None = None
    structures: str | None = None
    device: str = "auto"
    events: bool = True

    def arguments(self) -> list[str]:
        args = ["utility", "--train", str(self.train), "--synthetic", str(self.synthetic), "--test", str(self.test),
                "--out", str(self.out)]
        _opt(args, "--seeds", self.seeds)
        _opt(args, "--ratio", None if self.ratio is None else float(self.ratio))
        _opt(args, "--structures", self.structures)
        return _device_and_events(args, self.device, self.events)


@dataclass
class ChildCommand:
    """Everything needed to start the child: argv, environment, and where its events.jsonl will appear."""

    argv: list[str]
    env: dict[str, str]
    events_file: str | None = None
    stop_file: str | None = None  # writing it asks the engine to checkpoint and stop (see runfolder.STOP_REQUEST)
    cwd: str | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)


def build_command(settings, in_slicer: bool | None = None, slicer_home: str | None = None,
                  base_env: Mapping[str, str] | None = None, library_parent: str | None = None) -> ChildCommand:
    """The full child command for one settings object (train / generate / evaluate / phantoms)."""
    args = settings.arguments()
    argv = [*python_launcher(in_slicer, slicer_home), "-m", PACKAGE, *args]
    events_file = stop_file = None
    if isinstance(settings, (TrainSettings, GenerateSettings, EvaluateSettings, UtilitySettings)):
        events_file = str(RunFolder(settings.out).events)
    if getattr(settings, "out", None):  # every job stops on its output folder's stop-request file (stopping.py)
        stop_file = str(RunFolder(settings.out).stop_request)
    return ChildCommand(argv=argv, env=child_environment(base_env, library_parent), events_file=events_file,
                        stop_file=stop_file, description=args[0])


def device_choices(cuda_device_count: int = 0) -> list[tuple[str, str]]:
    """(label, --device value) pairs for a device selector: Auto, GPU 0..n-1, CPU."""
    items = [("Auto (GPU if available)", "auto")]
    items += [(f"GPU {i}", f"cuda:{i}") for i in range(max(0, int(cuda_device_count)))]
    items.append(("CPU", "cpu"))
    return items


# ------------------------------------------------------------------------------------ run folder facts
def _read_json(path: Path) -> dict:
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_json_path(model: str | os.PathLike | None) -> Path | None:
    """model.json of a run folder (RUN/model/model.json) or of a bundle folder (BUNDLE/model.json)."""
    if not model:
        return None
    for candidate in (Path(model) / "model" / "model.json", Path(model) / "model.json"):
        if candidate.is_file():
            return candidate
    return None


def model_conditions(model: str | os.PathLike | None) -> dict[str, list[str]]:
    """{"group": [...], "phase": [...]} from the bundle's model.json "conditions"; {} when unconditional/unreadable.

    The Generation section shows one combo per key (hidden when this is empty) and the guidance-scale slider."""
    path = model_json_path(model)
    if path is None:
        return {}
    conditions = _read_json(path).get("conditions") or {}
    if not isinstance(conditions, dict):
        return {}
    return {str(k): [str(v) for v in values] for k, values in conditions.items()
            if isinstance(values, (list, tuple)) and values}


def model_structures(model: str | os.PathLike | None) -> list[str]:
    """The structure names of a paired model (model.json "labels": {"structures": [{"name", "value"}, ...]}) in
    label-value order; [] for an unpaired model or none."""
    path = model_json_path(model)
    labels = _read_json(path).get("labels") if path is not None else None
    structures = labels.get("structures") if isinstance(labels, dict) else None
    if not isinstance(structures, list):
        return []
    entries = [s for s in structures if isinstance(s, dict) and "name" in s]
    return [str(s["name"]) for s in sorted(entries, key=lambda s: int(s.get("value") or 0))]


def run_data_sources(run_dir: str | os.PathLike | None) -> list[str]:
    """The training data of a run: config.json "data": {"sources": [...]} (or a plain list / string)."""
    if not run_dir:
        return []
    data = _read_json(Path(run_dir) / "config.json").get("data")
    if isinstance(data, dict):
        data = data.get("sources")
    if isinstance(data, str):
        data = [data]
    return [str(d) for d in data] if isinstance(data, list) else []


def can_resume(run_dir: str | os.PathLike | None) -> bool:
    """A run folder with its config and at least one checkpoint."""
    if not run_dir:
        return False
    run = RunFolder(run_dir)
    return run.is_run() and bool(run.list_checkpoints())  # temp files of an interrupted save do not count
