"""Inputs of the evaluation when the generated set is CT + label pairs (what `generate` writes for a paired run:
imagesTr/, labelsTr/, dataset.json, sidecars/): the generated CTs, the real and training pairs, all on one grid.

The CTs go through the whole report as any generated CT set does (the grid: the run's own when --run is given, else
the median size of the generated CTs; every CT's whole field of view resampled onto it, as training does). Their label
maps come along on exactly the same geometry (nearest neighbour), for the per-structure part of the report
(evaluation/structure_report.py): HU per structure, adherence, and near-copies of training label maps.
--real and --train must then be pairs too (any layout data/pairs.py reads), with the generated set's structures
(found by name, or by their sources: bone = femur + hip_bone + sacrum).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from CTDiffusionLib.errors import InputError

SIDECARS = "sidecars"  # generate's per-case sidecar folder in a pairs output


def is_pairs_folder(path) -> bool:
    """A folder in the nnU-Net raw layout (imagesTr/ and labelsTr/): what a paired run's `generate` writes."""
    p = Path(path)
    return (p / "imagesTr").is_dir() and (p / "labelsTr").is_dir()


@dataclass
class PairedSets:
    """The label maps beside the report's CT samples (same names, same grid), and where they came from."""

    structures: list  # pairs.Structure as the generated set names them; label value = position + 1
    folders: dict  # "generated", "real", "train" -> Path (train: None when not given)
    labels: dict = field(default_factory=dict)  # same keys -> [inputs.Sample] of uint8 label maps
    given_labels: list = field(default_factory=list)  # generated cases made for a given label map (--from-labels)


def _sidecar(folder: Path, case_id: str) -> dict:
    path = folder / SIDECARS / f"{case_id}.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise InputError(f"Sidecar {path} is not valid JSON.", "Fix or delete that file.") from None
    return data if isinstance(data, dict) else {}


def _read_pairs(folder: Path, flag: str, structures: list) -> list:
    """(PairCase, CT, label map) of every case, the label map holding `structures` as values 1..K."""
    from CTDiffusionLib.data.pairs import read_pair
    from CTDiffusionLib.utility.volumes import discover, structures_for

    cases = discover(folder, flag)
    resolved = structures_for(cases, structures, flag)
    return [(case, *read_pair(case, resolved)) for case in cases]


def _on_grid(pairs: list, grid_xyz: tuple, meta) -> tuple[list, list]:
    """(CT Samples, label-map Samples) on the grid, in the model's voxel order."""
    from CTDiffusionLib.evaluation.inputs import Sample
    from CTDiffusionLib.utility.volumes import to_grid

    cts, labels = [], []
    for case, ct, lab in pairs:
        on_grid = to_grid(case.case_id, ct, lab, grid_xyz, ())
        extent = [float(n * s) for n, s in zip(ct.GetSize(), ct.GetSpacing())]
        info = {"extent_mm": extent, "spacing": [float(s) for s in ct.GetSpacing()], **meta(case)}
        cts.append(Sample(case.case_id, on_grid.image.astype(np.float32), None, info))
        labels.append(Sample(case.case_id, on_grid.labels.astype(np.uint8), None, {"subject": case.case_id}))
    return cts, labels


def load_paired_inputs(real, generated, train, profile, run_config: dict | None):
    """(GeneratedSet of the generated CTs, real CT Samples, training CT Samples or None, PairedSets)."""
    from CTDiffusionLib.data.pairs import read_dataset_structures
    from CTDiffusionLib.evaluation.inputs import GeneratedSet, require_folder
    from CTDiffusionLib.profiles import get_profile

    generated = require_folder(generated, "--generated")
    structures = read_dataset_structures(generated)
    gen_pairs = _read_pairs(generated, "--generated", structures)
    sidecars = {case.case_id: _sidecar(generated, case.case_id) for case, _, _ in gen_pairs}
    grid = (run_config or {}).get("data", {}).get("grid")
    if not grid:  # the generated CTs' own size (they share it unless made for label maps of different sizes)
        grid = [int(v) for v in np.median([ct.GetSize() for _, ct, _ in gen_pairs], axis=0)]
    grid = tuple(int(v) for v in grid)

    def gen_meta(case):
        side = sidecars[case.case_id]
        return {k: side[k] for k in ("seed", "sampler", "steps", "guidance_scale") if k in side}

    gen_cts, gen_labels = _on_grid(gen_pairs, grid, gen_meta)
    names = {side.get("profile") for side in sidecars.values() if side.get("profile")}
    if len(names) > 1:
        raise InputError(f"Generated sidecars in {generated} mix profiles {sorted(names)}.",
                         "Evaluate one profile at a time.")
    chosen = get_profile(profile or (names.pop() if names else "prostate-ct"))
    if chosen.is_label_map:
        raise InputError(f"--profile {chosen.name} is a label-map profile, but {generated} holds CT + label pairs.",
                         "Leave --profile out (or give an intensity profile) for a paired run's output.")
    spacing = tuple(float(np.median([s.meta["extent_mm"][a] for s in gen_cts])) / grid[a] for a in range(3))
    for sample in gen_cts:  # per_sample rows carry the sidecar's fields, as for unpaired output
        sample.meta = {k: v for k, v in sample.meta.items() if k not in ("extent_mm", "spacing")}
    gen = GeneratedSet(gen_cts, chosen, "3d", spacing)

    sets = PairedSets(structures, {"generated": generated, "real": Path(real), "train": Path(train) if train else None})
    sets.labels["generated"] = gen_labels
    sets.given_labels = [c for c, side in sidecars.items() if side.get("from_labels")]
    real_cts, sets.labels["real"] = _on_grid(_read_pairs(require_folder(real, "--real"), "--real", structures), grid,
                                             lambda case: {"subject": case.case_id})
    train_cts = None
    if train:
        train_cts, sets.labels["train"] = _on_grid(
            _read_pairs(require_folder(train, "--train"), "--train", structures), grid,
            lambda case: {"subject": case.case_id})
    return gen, real_cts, train_cts, sets
