"""Privacy at a glance: a generated volume the quality report flags as a near-copy of a training case, shown beside
that training case in the linked comparison views (training case left, near-copy right), with the aligned
similarity and the threshold it exceeded. What to show comes from the report (metrics.json "per_sample" and
"memorisation"), the folder `generate` wrote, and the training data the evaluation compared with.

Imports `slicer` (MRML) only; the GUI wires one button to `show_near_copy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import get_profile
from CTDiffusionLib.scene import comparison, nodes
from CTDiffusionLib.scene.plots import load_metrics

#: 2D (slice-mode) evaluation names a training slice CASE_sNN; the case volume holds it.
_SLICE = re.compile(r"_s\d{2,}$")


@dataclass(frozen=True)
class NearCopy:
    sample: str  # generated volume's name, e.g. synthetic_0003
    synthetic_file: Path
    training_case: str  # as the report names it (a case id; CASE_sNN for a 2D slice)
    training_file: Path
    similarity: float
    threshold: float

    def text(self) -> str:
        return (f"{self.sample} is a near-copy of training case {self.training_case}: aligned similarity "
                f"{self.similarity:.4f}, above the threshold {self.threshold:.4f}.")


def flagged_samples(report) -> list[dict]:
    """The report's near-copies: per-sample rows marked memorised, with their nearest training case."""
    metrics = load_metrics(report)
    return [row for row in metrics.get("per_sample") or [] if row.get("memorised") and row.get("nearest_train")]


def near_copies(report, generated: str | Path, training_sources, profile: str | None = None) -> list[NearCopy]:
    """Each flagged sample with the two files to show; InputError (naming the folder) when a file is missing."""
    metrics = load_metrics(report)
    profile = get_profile(profile or metrics.get("profile"))
    threshold = (metrics.get("memorisation") or {}).get("threshold")
    flagged = flagged_samples(metrics)
    if not flagged:
        return []
    synthetic = {sample.name: sample.path for sample in nodes.list_generated(generated)}
    from CTDiffusionLib.data.discovery import discover_cases

    cases = {case.case_id: case.path for case in discover_cases([str(s) for s in training_sources], profile)}
    found = []
    for row in flagged:
        name, case = str(row["name"]), str(row["nearest_train"])
        if name not in synthetic:
            raise InputError(f"The flagged volume {name} is not in {generated}.",
                             "Evaluate and show the output of the same `generate` run.")
        case_file = cases.get(case) or cases.get(_SLICE.sub("", case))
        if case_file is None:
            raise InputError(f"The training case {case} is not in {', '.join(map(str, training_sources))}.",
                             "Point the module at the training data the evaluation used.")
        found.append(NearCopy(name, synthetic[name], case, case_file, float(row["nearest_similarity"]),
                              float(threshold)))
    return found


def show_near_copy(copy: NearCopy, profile: str, scene=None):
    """Load both volumes and show them side by side in the linked comparison views (training case left, labelled
    "Training"; near-copy right, labelled "Near-copy"). Returns (training node, synthetic node)."""
    profile = get_profile(profile)
    load = nodes.load_mask_segmentation if profile.is_label_map else nodes.load_ct_volume
    training = load(copy.training_file, name=nodes.unique_node_name(f"{copy.training_case} (training)", scene),
                    scene=scene, profile=profile)
    synthetic = load(copy.synthetic_file, name=nodes.unique_node_name(
        f"{copy.sample} (near-copy, similarity {copy.similarity:.3f})", scene), scene=scene, profile=profile)
    comparison.setup_comparison(training, synthetic, scene=scene)
    comparison.slice_node(scene, comparison.REAL_VIEW).SetLayoutLabel("Training")
    comparison.slice_node(scene, comparison.SYNTHETIC_VIEW).SetLayoutLabel("Near-copy")
    return training, synthetic
