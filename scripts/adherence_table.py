#!/usr/bin/env python3
"""How closely generated CTs follow the label maps they were made for: Dice per structure of a segmenter trained on
the real training pairs, generated vs the real-vs-real reference of the same segmenter (utility/adherence.py).

    python scripts/adherence_table.py --train TRAIN_PAIRS --heldout HELDOUT_PAIRS \
        --generated NAME=GENERATED_PAIRS [--generated NAME=...] [--structures SPEC] [--out table.json]

GENERATED_PAIRS is a `generate --from-labels` output (nnU-Net layout: each generated CT beside the label map it was
conditioned on). Prints two markdown tables: per structure the reference Dice [95% interval] on held-out real pairs
and each generated set's mean Dice over its cases; and the HU median [Q1, Q3] under each structure, held-out real and
each generated set (evaluation/structures.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from CTDiffusionLib.evaluation.structure_table import hu_cell  # noqa: E402
from CTDiffusionLib.evaluation.structures import structure_hu  # noqa: E402
from CTDiffusionLib.textformat import fixed  # noqa: E402
from CTDiffusionLib.utility.adherence import fit_segmenter, reference_dice, set_dice  # noqa: E402
from CTDiffusionLib.utility.volumes import discover  # noqa: E402




def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True)
    p.add_argument("--heldout", required=True)
    p.add_argument("--generated", action="append", required=True, help="NAME=FOLDER (NAME without '=')")
    p.add_argument("--structures", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    generated = [spec.split("=", 1) for spec in a.generated]
    for name, folder in generated:  # every folder checked before the segmenter trains
        discover(folder, f"--generated {name}")
    seg = fit_segmenter(a.train, structures=a.structures)
    reference = reference_dice(seg, a.heldout)
    table = {"reference": reference, "generated": {}}
    for name, folder in generated:
        table["generated"][name] = set_dice(seg, folder, f"--generated {name}")["per_structure"]
    names = list(table["generated"])
    print("| structure | real-vs-real reference [95% interval] | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for structure, ref in reference.items():
        lo, hi = ref["dice_ci95"] or (None, None)
        cells = [fixed(table["generated"][n].get(structure, {}).get("dice"), 2) for n in names]
        reference_cell = f"{fixed(ref['dice'], 2)} [{fixed(lo, 2)}, {fixed(hi, 2)}]"
        print(f"| {structure} | {reference_cell} | " + " | ".join(cells) + " |")
    hu = {"real": structure_hu(a.heldout, seg.structures)}
    hu.update({n: structure_hu(folder, seg.structures) for n, folder in generated})
    table["hu"] = hu

    print("\n| structure | " + " | ".join(hu) + " |")
    print("|---|" + "---|" * len(hu))
    for structure in reference:
        print(f"| {structure} | " + " | ".join(hu_cell(hu[n][structure]) for n in hu) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps(table, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
