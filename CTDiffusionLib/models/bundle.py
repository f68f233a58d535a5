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

from CTDiffusionLib.errors import InputError

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
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}, str(tmp))
    os.replace(tmp, folder / WEIGHTS)
    meta = {**meta, "format": BUNDLE_FORMAT, "weights": WEIGHTS, "sha256": sha256_of(folder / WEIGHTS)}
    tmp = folder / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, folder / META)
    return folder


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
    vocab = ConditionVocabulary(meta.get("conditions"))
    model = build_model(meta["model"], vocab.num_embeddings or None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"The weights in {weights} do not fit the architecture in {META} ({first}).",
                         "The bundle's files belong to different models: re-export it from its run folder.") from None
    return model.to(device).eval(), meta
