"""The model bundle: what `generate` needs, shareable between machines, never pickled.

    model/model.safetensors   EMA weights
    model/model.json          architecture, diffusion schedule and the scheduler's own settings, profile, intensity
                              mapping, output geometry, condition vocabulary, and the weights' sha256 (so a
                              mismatched copy is caught)

The layout and the reading of model.json live in runfolder.py; this module adds the torch side.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from CTDiffusionLib.errors import CTDiffusionError, InputError
from CTDiffusionLib.models.bundle_checks import check_bundle_fits, check_bundle_meta, check_weights_file
from CTDiffusionLib.runfolder import BUNDLE_FORMAT, BUNDLE_META, BUNDLE_WEIGHTS, BundleFolder, atomic_write, \
    read_model_json, write_json

WEIGHTS, META = BUNDLE_WEIGHTS, BUNDLE_META


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bundle(folder: Path, state_dict: dict, meta: dict) -> Path:
    """Replace the bundle's weights and model.json together.

    Two renames cannot be one, so the new weights first go to model.incoming.safetensors, then model.json (naming
    their sha256) is replaced, then the incoming file is renamed over model.safetensors. A kill before model.json is
    replaced leaves the old pair; a kill after it leaves model.json ahead of model.safetensors, and readers then take
    the incoming file, which is the one model.json names (`_described_weights`). No reader sees a mixed bundle."""
    bundle = BundleFolder(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    try:
        data = save(tensors)  # serialised once: the bytes written are the bytes hashed, nothing is read back
        atomic_write(bundle.incoming, data)
        write_json(bundle.meta, {**meta, "format": BUNDLE_FORMAT, "weights": WEIGHTS, "sha256": _sha256(data)})
        os.replace(bundle.incoming, bundle.weights)
    except (OSError, SafetensorError) as exc:  # disk full, quota, permissions; atomic_write left no temp file
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CTDiffusionError(f"Could not write the model bundle in {bundle.root} ({reason}).",
                               "Free disk space, then run the same command with --resume: it rewrites the bundle "
                               "from the last checkpoint.") from None
    return bundle.root


def _described_weights(folder: Path, meta: dict) -> tuple[Path, bytes | None]:
    """The weights file model.json describes and its bytes (None when no file has model.json's sha256).

    Normally model.safetensors; after a save killed between its last two steps, model.incoming.safetensors. The
    bytes are read once, hashed and then loaded, so a save finishing meanwhile cannot swap the file under the check.
    """
    weights = folder / meta.get("weights", WEIGHTS)
    # model.safetensors once more last: a save may rename the incoming file into place while we look
    refused = None
    for candidate in (weights, BundleFolder(folder).incoming, weights):
        if not candidate.exists():
            continue
        try:
            check_weights_file(candidate)  # a link to /dev/zero or a cut-short copy is never read in full
            data = candidate.read_bytes()
        except InputError as exc:
            refused = refused or exc
            continue
        except OSError:
            continue
        if _sha256(data) == meta.get("sha256"):
            return candidate, data
    if refused is not None:
        raise refused
    return weights, None


def bundle_is_current(folder: Path, step: int) -> bool:
    """True when the bundle in `folder` was written at `step` and its save finished (model.safetensors is the file
    model.json describes); otherwise the trainer rewrites it from its checkpoint."""
    bundle = BundleFolder(folder)
    try:
        meta = json.loads(bundle.meta.read_text(encoding="utf-8"))
        return (meta.get("training", {}).get("step") == step
                and _sha256(bundle.weights.read_bytes()) == meta.get("sha256"))
    except (OSError, ValueError, AttributeError):
        return False


def load_bundle(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network from model.json and load its weights; every mismatch is a clear InputError."""
    meta = read_model_json(path)
    folder = Path(meta["_folder"])
    check_bundle_meta(meta, folder / META)  # every field's type and range, before anything is built or read
    check_bundle_fits(meta, folder / META, str(device))  # parameters counted without allocating them
    weights, data = _described_weights(folder, meta)
    if data is None and not weights.exists():
        raise InputError(f"{weights} is missing from the bundle.", "Copy model.safetensors together with model.json.")
    if data is None:
        raise InputError(f"{weights} does not match {folder / META} (sha256 differs).",
                         "The two files come from different models or a copy was cut short: re-copy the bundle.")
    try:
        state = load(data)
    except SafetensorError as exc:
        raise InputError(f"{weights} is not a readable safetensors file ({exc}).", "Re-copy the bundle.") from None
    model = _model_fitting_weights(meta, state, folder / META, weights)
    return model.to(device).eval(), meta


_EDITED_HINT = ("model.json was edited or comes from another model: restore it from the run folder it came from "
                "(its model/ folder, or `train --resume` rewrites it).")


def _model_fitting_weights(meta: dict, state: dict, meta_file: Path, weights: Path) -> torch.nn.Module:
    """Check model.json against itself and the weights; one sentence naming the field that is off.

    The network stored in model.json is authoritative, not today's preset of the same name: presets are redesigned
    between versions, and a bundle trained with an earlier `default` must keep loading."""
    from CTDiffusionLib.label_sets import network_channels
    from CTDiffusionLib.models.conditioning import ConditionVocabulary
    from CTDiffusionLib.models.factory import build_model
    from CTDiffusionLib.profiles import PROFILES
    from CTDiffusionLib.models.grid import check_grid, network_spatial_dims

    def refuse(problem: str) -> InputError:
        return InputError(f"{meta_file} does not fit its weights: {problem}.", _EDITED_HINT)

    try:
        profile, spec, mode, grid = meta["profile"], meta["model"], meta["data"]["mode"], list(meta["data"]["grid"])
        in_ch, out_ch = spec["kwargs"]["in_channels"], spec["kwargs"]["out_channels"]
    except (KeyError, TypeError) as exc:
        raise refuse(f"the entry {exc} is missing or malformed") from None
    if profile not in PROFILES:
        raise refuse(f"profile {profile!r} is not one of {', '.join(PROFILES)}")
    channels = PROFILES[profile].channels
    expected_in, expected_out = network_channels(meta, channels)  # + label-map channels of a paired run
    if (in_ch, out_ch) != (expected_in, expected_out):
        needs = (f"{expected_in} image channel(s) in and out" if expected_in == expected_out else
                 f"{expected_in} channels in (CT + one per structure) and {expected_out} out")
        raise refuse(f"profile {profile} needs {needs}, the network has {in_ch} in and {out_ch} out")
    spatial = network_spatial_dims(spec)
    if spatial != (2 if mode == "2d" else 3) or len(grid) != (2 if mode == "2d" else 3):
        raise refuse(f"data mode {mode!r} with grid {grid} does not match a {spatial}D network")
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
