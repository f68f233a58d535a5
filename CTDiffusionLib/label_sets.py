"""The label set of a paired run (`train --with-labels`): which structures it learned, and what that means for its
two networks.

A paired run trains two models on the same CT + label-map pairs:
  - the CT model, conditioned on the label map: its input is the noisy CT plus one channel per structure (one-hot
    in {-1, +1}); a dropped or absent label map is all zeros, the "null" condition of classifier-free guidance;
  - the label model, which generates label maps alone: K + 1 one-hot channels (background first), argmax decode.
Both record the structures in config.json and model.json as
`"labels": {"structures": [{"name", "value", "sources"}], ...}`; the CT model adds `"conditioning": "concat",
"null": "zeros"` and where its label model is, the label model `"generates": "label_map"`.

Standard library only (imported by the bundle checks and the command line before torch).
"""

from __future__ import annotations

from dataclasses import replace

from CTDiffusionLib.profiles import LabelClass, Profile

LABEL_RUN = "labels"  # the label model's own run folder inside a paired run: RUN/labels/{config.json, model/, ...}
LABEL_BUNDLE_FROM_CT_BUNDLE = "../labels/model"  # recorded in the CT model.json, relative to its bundle folder
CONDITIONING = "concat"
GENERATES_LABELS = "label_map"

# Distinct colours for up to a dozen structures (then repeated): tab10-like, readable on grey CT.
_PALETTE = ((0.90, 0.30, 0.25), (0.25, 0.55, 0.90), (0.35, 0.80, 0.35), (0.95, 0.75, 0.20), (0.70, 0.40, 0.85),
            (0.20, 0.80, 0.80), (0.95, 0.50, 0.75), (0.60, 0.45, 0.30), (0.65, 0.85, 0.20), (0.95, 0.60, 0.35),
            (0.45, 0.45, 0.95), (0.85, 0.85, 0.85))


def structure_entries(structures) -> list[dict]:
    """pairs.Structure objects (or their dicts) -> the JSON entries, value = 1-based position (background 0)."""
    entries = []
    for i, s in enumerate(structures, start=1):
        name, sources = (s["name"], s["sources"]) if isinstance(s, dict) else (s.name, s.sources)
        entries.append({"name": str(name), "value": i, "sources": [str(x) for x in sources]})
    return entries


def ct_labels_entry(structures) -> dict:
    """The CT model's `labels` entry: structures, concatenated conditioning, zeros as the null condition."""
    return {"structures": structure_entries(structures), "conditioning": CONDITIONING, "null": "zeros",
            "label_bundle": LABEL_BUNDLE_FROM_CT_BUNDLE}


def label_model_entry(structures) -> dict:
    """The label model's `labels` entry."""
    return {"structures": structure_entries(structures), "generates": GENERATES_LABELS}


def is_paired_ct(meta: dict) -> bool:
    """A CT model (config or model.json) that takes a label map as its condition."""
    return (meta.get("labels") or {}).get("conditioning") == CONDITIONING


def generates_label_maps(meta: dict) -> bool:
    return (meta.get("labels") or {}).get("generates") == GENERATES_LABELS


def num_structures(meta: dict) -> int:
    return len((meta.get("labels") or {}).get("structures") or [])


def network_channels(meta: dict, image_channels: int) -> tuple[int, int]:
    """(in, out) channels the network of a config/model.json must have: the image's own (`image_channels`, the
    profile's), plus one condition channel per structure for a paired CT model; K + 1 for a label model."""
    if generates_label_maps(meta):
        return num_structures(meta) + 1, num_structures(meta) + 1
    extra = num_structures(meta) if is_paired_ct(meta) else 0
    return image_channels + extra, image_channels


def label_profile(base: Profile, structures) -> Profile:
    """`base` seen as a label map of `structures` (background + one class per structure): what the label model's
    data, batches, previews and decoding need. It keeps the base's name, so bundles name a known profile."""
    entries = structure_entries(structures)
    classes = (LabelClass(0, "background", (0.0, 0.0, 0.0)),) + tuple(
        LabelClass(e["value"], e["name"], _PALETTE[(e["value"] - 1) % len(_PALETTE)],
                   tuple(x.lower() for x in e["sources"])) for e in entries)
    return replace(base, classes=classes, hu_range=None, hu_knots=(), display_window=None, comparison_window=None,
                   output_dtype="uint8", evaluation="", phantoms="")


def stage_profile(config: dict) -> Profile:
    """The profile a run's (or a paired run's label model's) samples are seen through."""
    from CTDiffusionLib.profiles import get_profile

    profile = get_profile(config["profile"])
    return label_profile(profile, config["labels"]["structures"]) if generates_label_maps(config) else profile
