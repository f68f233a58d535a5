"""The model bundle: what `generate` needs, shareable between machines, never pickled.

    model/model.safetensors   EMA weights
    model/model.json          architecture, diffusion schedule and the scheduler's own settings, profile, intensity
                              mapping, output geometry, condition vocabulary, and the weights' sha256 (so a
                              mismatched copy is caught)

The layout and the reading of model.json live in runfolder.py; this module adds the torch side.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.runfolder import BUNDLE_FORMAT, BUNDLE_META, BUNDLE_WEIGHTS, BundleFolder, atomic_write, \
    read_model_json, write_json

WEIGHTS, META = BUNDLE_WEIGHTS, BUNDLE_META


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(folder: Path, state_dict: dict, meta: dict) -> Path:
    """Write weights then metadata, each atomically; metadata last so a reader never sees a half bundle."""
    bundle = BundleFolder(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write(bundle.weights, lambda tmp: save_file(tensors, str(tmp)))
    write_json(bundle.meta, {**meta, "format": BUNDLE_FORMAT, "weights": WEIGHTS, "sha256": sha256_of(bundle.weights)})
    return bundle.root


def load_bundle(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network from model.json and load its weights; every mismatch is a clear InputError."""
    from CTDiffusionLib.models.conditioning import ConditionVocabulary
    from CTDiffusionLib.models.factory import build_model

    meta = read_model_json(path)
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
