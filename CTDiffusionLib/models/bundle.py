"""The model bundle: what `generate` needs, shareable between machines, never pickled.

    model/model.safetensors   EMA weights
    model/model.json          architecture, diffusion schedule, profile, intensity mapping, output geometry,
                              condition vocabulary, and the weights' sha256 (so a mismatched copy is caught)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from CTDiffusionLib.errors import CTDiffusionError, InputError

BUNDLE_FORMAT = "ctdiffusion-bundle/1"
WEIGHTS, META = "model.safetensors", "model.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(folder: Path, state_dict: dict, meta: dict) -> Path:
    """Write weights then metadata, each atomically; metadata last so a reader never sees a half bundle."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS + ".tmp")
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}, str(tmp))
        os.replace(tmp, folder / WEIGHTS)
        meta = {**meta, "format": BUNDLE_FORMAT, "weights": WEIGHTS, "sha256": sha256_of(folder / WEIGHTS)}
        tmp = folder / (META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, folder / META)
    except (OSError, SafetensorError) as exc:  # disk full, quota, permissions
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CTDiffusionError(f"Could not write the model bundle in {folder} ({reason}).",
                               "Free disk space, then run the same command with --resume: it rewrites the bundle "
                               "from the last checkpoint.") from None
    return folder


def bundle_is_current(folder: Path, step: int) -> bool:
    """True when the bundle in `folder` is complete (weights match model.json) and was written at `step`."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        return meta.get("training", {}).get("step") == step and sha256_of(folder / WEIGHTS) == meta.get("sha256")
    except (OSError, ValueError):
        return False


def resolve_bundle_dir(path: str | os.PathLike) -> Path:
    """A run folder, a bundle folder, or model.json itself -> the bundle folder; clear errors otherwise."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(f"{p} is a pickled PyTorch file; loading it could run arbitrary code.",
                         "Give a CTDiffusion run folder or model bundle (model.json + model.safetensors).")
    if not p.exists():
        raise InputError(f"Model {p} does not exist.", "Give a run folder or a model bundle folder.")
    if p.is_file() and p.name == META:
        p = p.parent
    if p.is_dir() and (p / "model").is_dir() and not (p / META).exists():
        p = p / "model"
    if not p.is_dir() or not (p / META).exists():
        if p.is_dir() and any(p.glob("*.pt")) or (p / "checkpoints").is_dir():
            raise InputError(f"{p} holds no model bundle yet (no {META}).",
                             "Wait for the first checkpoint of the training run, or train longer.")
        raise InputError(f"{p} is not a model bundle: {META} is missing.",
                         "Give a run folder or a folder with model.json + model.safetensors.")
    return p


def read_bundle_meta(path: str | os.PathLike) -> dict:
    folder = resolve_bundle_dir(path)
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{folder / META} is not valid JSON ({exc}).", "Re-copy the bundle.") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{folder / META} is not a {BUNDLE_FORMAT} file.", "Re-export the bundle with this version.")
    meta["_folder"] = str(folder)
    return meta


def load_bundle(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network from model.json and load its weights; every mismatch is a clear InputError."""
    from CTDiffusionLib.models.conditioning import ConditionVocabulary
    from CTDiffusionLib.models.factory import build_model

    meta = read_bundle_meta(path)
    folder = Path(meta["_folder"])
    weights = folder / meta.get("weights", WEIGHTS)
    if not weights.exists():
        raise InputError(f"{weights} is missing from the bundle.", "Copy model.safetensors together with model.json.")
    if sha256_of(weights) != meta.get("sha256"):
        raise InputError(f"{weights} does not match {folder / META} (sha256 differs).",
                         "The two files come from different models or a copy was cut short: re-copy the bundle.")
    try:
        state = load_file(str(weights), device="cpu")
    except SafetensorError as exc:
        raise InputError(f"{weights} is not a readable safetensors file ({exc}).", "Re-copy the bundle.") from None
    model = _model_fitting_weights(meta, state, folder / META, weights)
    return model.to(device).eval(), meta


_EDITED_HINT = ("model.json was edited or comes from another model: restore it from the run folder it came from "
                "(its model/ folder, or `train --resume` rewrites it).")


def _model_fitting_weights(meta: dict, state: dict, meta_file: Path, weights: Path) -> torch.nn.Module:
    """Check model.json against itself, the presets and the weights; one sentence naming the field that is off."""
    from CTDiffusionLib.models.conditioning import ConditionVocabulary
    from CTDiffusionLib.models.factory import build_model
    from CTDiffusionLib.presets import MASK_CLASSES, PRESETS
    from CTDiffusionLib.training.config import check_grid

    def refuse(problem: str) -> InputError:
        return InputError(f"{meta_file} does not fit its weights: {problem}.", _EDITED_HINT)

    try:
        profile, spec, mode, grid = meta["profile"], meta["model"], meta["data"]["mode"], list(meta["data"]["grid"])
        in_ch, out_ch = spec["kwargs"]["in_channels"], spec["kwargs"]["out_channels"]
    except (KeyError, TypeError) as exc:
        raise refuse(f"the entry {exc} is missing or malformed") from None
    channels = {"prostate-ct": 1, "cardiac-masks": len(MASK_CLASSES)}.get(profile)
    if channels is None:
        raise refuse(f"profile {profile!r} is not one of {', '.join(PRESETS)}")
    if (in_ch, out_ch) != (channels, channels):
        raise refuse(f"profile {profile} needs {channels} image channel(s) in and out, the network has "
                     f"{in_ch} in and {out_ch} out")
    spatial = 3 if spec.get("type") == "aniso_unet" else spec["kwargs"].get("spatial_dims")
    if spatial != (2 if mode == "2d" else 3) or len(grid) != (2 if mode == "2d" else 3):
        raise refuse(f"data mode {mode!r} with grid {grid} does not match a {spatial}D network")
    preset = PRESETS[profile].get(meta.get("preset"))
    if preset is not None and json.loads(json.dumps(preset["model"])) != spec:
        named = json.loads(json.dumps(preset["model"]))
        ours, theirs = {"type": spec.get("type"), **spec["kwargs"]}, {"type": named["type"], **named["kwargs"]}
        key = next(k for k in sorted(ours.keys() | theirs.keys()) if ours.get(k) != theirs.get(k))
        raise refuse(f"it names preset {meta['preset']!r} but describes a different network ({key} "
                     f"{ours.get(key)} instead of {theirs.get(key)})")
    try:
        check_grid(grid, spec, mode)
    except InputError as exc:
        raise refuse(exc.message.rstrip(".")) from None
    try:
        vocab = ConditionVocabulary(meta.get("conditions"))
        model = build_model(spec, vocab.num_embeddings or None)
    except Exception as exc:  # any constructor complaint about the edited numbers
        raise refuse(f"its network cannot be built ({type(exc).__name__}: {exc})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = [k for k in expected if k in found and expected[k] != found[k]]
    if missing or unexpected:
        detail = f"{len(missing)} tensors missing from {weights.name}" + (f" (e.g. {missing[0]})" if missing else "")
        detail += f", {len(unexpected)} unused" + (f" (e.g. {unexpected[0]})" if unexpected else "")
        raise refuse(detail)
    if wrong:
        k = wrong[0]
        raise refuse(f"{len(wrong)} tensors have other shapes, e.g. {k} is {'x'.join(map(str, found[k])) or 'scalar'} "
                     f"in {weights.name} but {'x'.join(map(str, expected[k])) or 'scalar'} in the network it describes")
    model.load_state_dict(state, strict=True)
    return model
