"""What the Slicer module runs in its child process: the interpreter, the environment and the argument list.

Stdlib only. Inside Slicer the child is `PythonSlicer -m CTDiffusionLib ...` with PYTHONPATH pointing at the
folder that holds the installed CTDiffusionLib; anywhere else it is `sys.executable -m CTDiffusionLib ...`.
Every command line is built from the command's request (CTDiffusionLib/requests.py), so the widget never assembles
flags by hand: the request's field table is also what builds the child's argument parser.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from CTDiffusionLib.requests import EngineRequest, Request
from CTDiffusionLib.runfolder import CONFIG, BundleFolder, RunFolder, read_json_or_empty

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


def build_command(request: Request, in_slicer: bool | None = None, slicer_home: str | None = None,
                  base_env: Mapping[str, str] | None = None, library_parent: str | None = None) -> ChildCommand:
    """The full child command for one request (requests.py): commands with an event stream send it (the runner
    follows the child through it)."""
    events_file = None
    if isinstance(request, EngineRequest):
        request = replace(request, events=True)
        events_file = str(RunFolder(request.out).events)
    args = request.argv()
    argv = [*python_launcher(in_slicer, slicer_home), "-m", PACKAGE, *args]
    # every job stops on its output folder's stop-request file (stopping.py)
    stop_file = str(RunFolder(request.out).stop_request) if getattr(request, "out", None) else None
    return ChildCommand(argv=argv, env=child_environment(base_env, library_parent), events_file=events_file,
                        stop_file=stop_file, description=args[0])


def device_choices(cuda_device_count: int = 0) -> list[tuple[str, str]]:
    """(label, --device value) pairs for a device selector: Auto, GPU 0..n-1, CPU."""
    items = [("Auto (GPU if available)", "auto")]
    items += [(f"GPU {i}", f"cuda:{i}") for i in range(max(0, int(cuda_device_count)))]
    items.append(("CPU", "cpu"))
    return items


# ------------------------------------------------------------------------------------ run folder facts
def model_json_path(model: str | os.PathLike | None) -> Path | None:
    """model.json of a run folder (RUN/model/model.json) or of a bundle folder (BUNDLE/model.json)."""
    if not model:
        return None
    for candidate in (RunFolder(model).bundle.meta, BundleFolder(model).meta):
        if candidate.is_file():
            return candidate
    return None


def model_conditions(model: str | os.PathLike | None) -> dict[str, list[str]]:
    """{"group": [...], "phase": [...]} from the bundle's model.json "conditions"; {} when unconditional/unreadable.

    The Generation section shows one combo per key (hidden when this is empty) and the guidance-scale slider."""
    path = model_json_path(model)
    if path is None:
        return {}
    conditions = read_json_or_empty(path).get("conditions") or {}
    if not isinstance(conditions, dict):
        return {}
    return {str(k): [str(v) for v in values] for k, values in conditions.items()
            if isinstance(values, (list, tuple)) and values}


def model_structures(model: str | os.PathLike | None) -> list[str]:
    """The structure names of a paired model (model.json "labels": {"structures": [{"name", "value"}, ...]}) in
    label-value order; [] for an unpaired model or none."""
    path = model_json_path(model)
    labels = read_json_or_empty(path).get("labels") if path is not None else None
    structures = labels.get("structures") if isinstance(labels, dict) else None
    if not isinstance(structures, list):
        return []
    entries = [s for s in structures if isinstance(s, dict) and "name" in s]
    return [str(s["name"]) for s in sorted(entries, key=lambda s: int(s.get("value") or 0))]


def run_data_sources(run_dir: str | os.PathLike | None) -> list[str]:
    """The training data of a run: config.json "data": {"sources": [...]} (or a plain list / string)."""
    if not run_dir:
        return []
    data = read_json_or_empty(Path(run_dir) / CONFIG).get("data")
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
