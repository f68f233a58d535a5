"""The on-disk layout of a run folder and of a model bundle, their JSON readers, and the one atomic write.

    RUN_DIR/
      config.json      fully resolved configuration (enough to reproduce the run)
      dataset.json     cases, split, shapes, spacings, intensity statistics
      events.jsonl     the event stream, one JSON object per line
      checkpoints/     step_00000500.pt ... (newest complete one is resumed)
      model/           the model bundle (below)
      samples/         periodic preview volumes and PNGs
      input/           input data exported into the run (the Slicer module puts it there)
      cache/           preprocessed cases (.npz), reused by --resume and by later runs on the same data
      stop-request     written by a parent (the Slicer module's Stop) to ask the trainer to checkpoint and exit;
                       works where signals cannot reach the trainer (Windows GUI parents, launchers)

    BUNDLE_DIR/ (RUN_DIR/model, or a copy anywhere)
      model.safetensors   weights (never pickled)
      model.json          architecture, diffusion schedule, profile, intensity mapping, output geometry
      model.incoming.safetensors   only while a save is under way (or was killed): see models/bundle.py

Every save goes through `atomic_write`: a temporary file in the same folder, flushed to disk, then renamed over
the target, so a reader sees the old file or the new one, never half of one. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from CTDiffusionLib.errors import InputError

RUN_FORMAT = "ctdiffusion-run/1"  # config.json "format"
BUNDLE_FORMAT = "ctdiffusion-bundle/1"  # model.json "format"

CONFIG = "config.json"
DATASET = "dataset.json"
EVENTS = "events.jsonl"
CHECKPOINTS = "checkpoints"
MODEL = "model"
SAMPLES = "samples"
INPUT = "input"
CACHE = "cache"
STOP_REQUEST = "stop-request"
OUTPUT_MARKER = ".ctdiffusion-output"  # marks a folder CTDiffusion created as its own (output_folder.py)
METRICS = "metrics.json"  # a report folder (`evaluate --out`): the numbers, ...
REPORT_HTML = "report.html"  # ... the page people read ...
FIGURES = "figures"  # ... and its pictures
UTILITY = "utility.json"  # `utility --out`: the downstream benchmark's result
BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_META = "model.json"
BUNDLE_INCOMING = "model.incoming.safetensors"  # new weights between a save's first and last step (bundle.py)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})\.pt$")
_TEMP_MARK = ".tmp-"


# ------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class _Folder:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser())


@dataclass(frozen=True)
class RunFolder(_Folder):
    """Paths inside one run folder (nothing is created or read by building one)."""

    config = property(lambda self: self.root / CONFIG)
    dataset = property(lambda self: self.root / DATASET)
    events = property(lambda self: self.root / EVENTS)
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    model = property(lambda self: self.root / MODEL)
    samples = property(lambda self: self.root / SAMPLES)
    input = property(lambda self: self.root / INPUT)
    cache = property(lambda self: self.root / CACHE)
    stop_request = property(lambda self: self.root / STOP_REQUEST)

    @property
    def bundle(self) -> BundleFolder:
        return BundleFolder(self.model)

    def is_run(self) -> bool:
        return self.config.is_file()

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    def list_checkpoints(self) -> list[Path]:
        return list_checkpoints(self.checkpoints)

    def read_config(self) -> dict:
        return read_config(self.root)

    def read_dataset(self) -> dict:
        return read_json(self.dataset, "the run's data set description")


@dataclass(frozen=True)
class ReportFolder(_Folder):
    """Paths inside one report folder (`evaluate --out`): metrics.json, report.html, figures/ and the event log."""

    metrics = property(lambda self: self.root / METRICS)
    report = property(lambda self: self.root / REPORT_HTML)
    figures = property(lambda self: self.root / FIGURES)
    events = property(lambda self: self.root / EVENTS)

    def written(self) -> list[str]:
        """The names of the report's own files that exist (a new report must not mix with an old one)."""
        return [name for name in (METRICS, REPORT_HTML, FIGURES) if (self.root / name).exists()]


@dataclass(frozen=True)
class BundleFolder(_Folder):
    """Paths inside one model bundle folder."""

    weights = property(lambda self: self.root / BUNDLE_WEIGHTS)
    meta = property(lambda self: self.root / BUNDLE_META)
    incoming = property(lambda self: self.root / BUNDLE_INCOMING)

    def exists(self) -> bool:
        return self.meta.is_file()


def checkpoint_name(step: int) -> str:
    return f"step_{int(step):08d}.pt"


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first (temporary files of an interrupted save are not listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if CHECKPOINT_PATTERN.match(p.name)), key=lambda p: p.name)


def is_temporary(path: str | os.PathLike) -> bool:
    """A file `atomic_write` was writing when it was interrupted (safe to ignore or delete)."""
    name = Path(path).name
    return name.startswith(".") and _TEMP_MARK in name


# ------------------------------------------------------------------------------------------ readers
def json_document(source, file_name: str) -> dict:
    """A report's JSON document given as the folder holding `file_name`, the file itself, or the parsed dict."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / file_name
    return json.loads(path.read_text(encoding="utf-8"))


def read_json_or_empty(path: str | os.PathLike | None) -> dict:
    """A JSON object from `path`, or {} when it is absent, unreadable, damaged or not an object: for what is only
    shown or offered (a panel's choices, a viewer's table), where a damaged file must not stop anything."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8")) if path is not None else {}
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def read_json(path: str | os.PathLike, what: str = "file", hint: str = "") -> dict:
    """A JSON object from `path`; InputError naming the file when it is missing, unreadable or not an object."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} ({what}) is missing.", hint or "Check the folder you gave.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InputError(f"{path} ({what}) is not valid JSON ({reason}).",
                         hint or "The file is damaged: restore it or re-create it.") from None
    except OSError as exc:
        raise InputError(f"{path} ({what}) cannot be read ({exc.strerror or exc}).",
                         hint or "Check the file's permissions.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} ({what}) does not hold a JSON object.",
                         hint or "The file is damaged: restore it or re-create it.")
    return data


def read_config(run_dir: str | os.PathLike) -> dict:
    """config.json of a run folder, checked to be a CTDiffusion run configuration."""
    path = Path(run_dir).expanduser() / CONFIG
    if not path.is_file():
        raise InputError(f"{Path(run_dir)} holds no CTDiffusion run ({CONFIG} is missing).",
                         "Point at a run folder written by `ctdiffusion train`.")
    config = read_json(path, "run configuration")
    if config.get("format") != RUN_FORMAT:
        raise InputError(f"{path} is not a CTDiffusion run configuration ({RUN_FORMAT}).",
                         "Point at a run folder written by `ctdiffusion train`.")
    return config


def read_dataset(run_dir: str | os.PathLike) -> dict:
    return RunFolder(run_dir).read_dataset()


def resolve_bundle_dir(path: str | os.PathLike) -> Path:
    """A run folder, a bundle folder, or model.json itself -> the bundle folder; clear errors otherwise."""
    p = Path(path).expanduser()
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(f"{p} is a pickled PyTorch file; loading it could run arbitrary code.",
                         f"Give a CTDiffusion run folder or model bundle ({BUNDLE_META} + {BUNDLE_WEIGHTS}).")
    if not p.exists():
        raise InputError(f"Model {p} does not exist.", "Give a run folder or a model bundle folder.")
    if p.is_file() and p.name == BUNDLE_META:
        p = p.parent
    if p.is_dir() and (p / MODEL).is_dir() and not (p / BUNDLE_META).exists():
        p = p / MODEL
    if not p.is_dir() or not (p / BUNDLE_META).exists():
        if p.is_dir() and any(p.glob("*.pt")) or (p / CHECKPOINTS).is_dir():
            raise InputError(f"{p} holds no model bundle yet (no {BUNDLE_META}).",
                             "Wait for the first checkpoint of the training run, or train longer.")
        raise InputError(f"{p} is not a model bundle: {BUNDLE_META} is missing.",
                         f"Give a run folder or a folder with {BUNDLE_META} + {BUNDLE_WEIGHTS}.")
    return p


def read_model_json(path: str | os.PathLike) -> dict:
    """model.json of a run folder or bundle, checked for the bundle format; "_folder" is the bundle folder."""
    folder = resolve_bundle_dir(path)
    meta = read_json(folder / BUNDLE_META, "model bundle description", "Re-copy the bundle.")
    if meta.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{folder / BUNDLE_META} is not a {BUNDLE_FORMAT} file.",
                         "Re-export the bundle with this version.")
    meta["_folder"] = str(folder)
    return meta


# ------------------------------------------------------------------------------------------ the one atomic write
def temporary_path(path: str | os.PathLike) -> Path:
    """A hidden, unique name next to `path` that keeps its full suffix (.nii.gz, .npz, .pt), since some writers
    choose the format by it or append one otherwise."""
    path = Path(path)
    stem, dot, suffix = path.name.partition(".")
    return path.with_name(f".{stem}{_TEMP_MARK}{uuid.uuid4().hex[:12]}{dot}{suffix}")


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[Path], object], *,
                 exclusive: bool = False) -> Path:
    """Write `content` to `path` so that readers see the old file or the complete new one, never a part.

    `content` is bytes, text (UTF-8), or a function that writes the file at the temporary path it is given
    (e.g. `lambda tmp: torch.save(state, tmp)`). The temporary file lives in the same folder (a rename is only
    atomic within one file system), is flushed to disk before it replaces `path`, and is removed on any error.
    With `exclusive` an existing `path` is never replaced: OutputExists (exit 2) instead (outputs a user keeps).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        if callable(content):
            content(tmp)
            with open(tmp, "rb+") as f:  # make the writer's bytes durable before the rename publishes them
                os.fsync(f.fileno())
        else:
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        publish(tmp, path, exclusive)
    except BaseException:  # KeyboardInterrupt included: no temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


class OutputExists(InputError):
    """An output file is already there; CTDiffusion never replaces a file it did not mean to."""


def publish(tmp: str | os.PathLike, path: str | os.PathLike, exclusive: bool = False) -> None:
    """Rename the finished `tmp` to `path`. With `exclusive`, refuse an existing `path` atomically: a hard link
    fails when the name exists (where the file system has no hard links, the existence check runs under the output
    folder's lock, output_folder.py, so nobody else can create the name meanwhile)."""
    tmp, path = Path(tmp), Path(path)
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExists(f"{path} already exists; CTDiffusion does not replace it.",
                           "Choose a new output folder, or move the file away first.") from None
    except OSError:  # no hard links here (FAT, some network shares)
        if path.exists():
            raise OutputExists(f"{path} already exists; CTDiffusion does not replace it.",
                               "Choose a new output folder, or move the file away first.") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """The atomic write of a whole folder: yields a hidden temporary folder beside `folder` to fill; on success it
    replaces `folder` (which must be missing or empty), on any error it is removed. Readers never see half a folder.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}{_TEMP_MARK}{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        yield tmp
        if folder.exists():
            folder.rmdir()  # empty (the caller checked); os.replace cannot replace a folder on every OS
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, data: dict, *, exclusive: bool = False) -> Path:
    """Atomic JSON write (indented, UTF-8); `exclusive` as in atomic_write."""
    return atomic_write(path, json.dumps(data, indent=2), exclusive=exclusive)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); folders cannot be opened for fsync on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
