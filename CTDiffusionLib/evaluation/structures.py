"""HU per structure of CT + label pairs: does the CT generated for a label map put real tissue under each label?

For each structure the HU of every voxel it labels, pooled over the cases of a pairs folder (any layout
data/pairs.py reads, e.g. what `generate --from-labels` writes), summarised as median and interquartile range.
`compare_structure_hu` puts generated next to real for the same structures (merged the same way, e.g.
bone = femur + hip_bone + sacrum).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def structure_hu(folder, structures) -> dict[str, dict]:
    """{structure name: {median, q1, q3, iqr, voxels}} over every case in `folder` (pairs.Structure list)."""
    from CTDiffusionLib.data.pairs import Structure, discover_pairs, read_pair, structure_names

    cases = discover_pairs([folder])
    present = set(structure_names(cases))
    # a folder written by `generate` names the merged structures themselves (bone), the source data their parts
    structures = [s if present & set(s.sources) else Structure(s.name, (s.name,)) for s in structures]
    values: dict[str, list[np.ndarray]] = {s.name: [] for s in structures}
    for case in cases:
        ct, labels = read_pair(case, structures)
        hu, lab = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(labels)
        for k, s in enumerate(structures, start=1):
            values[s.name].append(hu[lab == k].astype(np.float64))
    summary = {}
    for name, parts in values.items():
        voxels = np.concatenate(parts) if parts else np.zeros(0)
        if voxels.size == 0:
            summary[name] = {"median": None, "q1": None, "q3": None, "iqr": None, "voxels": 0}
            continue
        q1, median, q3 = np.percentile(voxels, [25, 50, 75])
        summary[name] = {"median": float(median), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
                         "voxels": int(voxels.size)}
    return summary


def compare_structure_hu(real, generated, structures) -> dict[str, dict]:
    """{structure: {"real": summary, "generated": summary}} for two pairs folders."""
    real_hu, generated_hu = structure_hu(real, structures), structure_hu(generated, structures)
    return {s.name: {"real": real_hu[s.name], "generated": generated_hu[s.name]} for s in structures}


def format_table(comparison: dict[str, dict]) -> str:
    """A Markdown table: median [IQR] HU, generated vs real, per structure."""
    from CTDiffusionLib.evaluation.structure_table import hu_cell as cell

    rows = ["| structure | generated median [Q1, Q3] HU | real median [Q1, Q3] HU | voxels (gen / real) |",
            "|---|---|---|---|"]
    for name, pair in comparison.items():
        rows.append(f"| {name} | {cell(pair['generated'])} | {cell(pair['real'])} | "
                    f"{pair['generated']['voxels']} / {pair['real']['voxels']} |")
    return "\n".join(rows)
