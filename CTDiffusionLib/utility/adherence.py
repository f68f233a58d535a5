"""Adherence: how well a generated CT follows the label map it was generated from, per structure.

A segmenter of the benchmark's recipe, trained on the real training pairs, segments the generated CT; Dice per
structure against the conditioning label map says whether the organs were drawn where the labels put them. The
yardstick is real-vs-real: the same segmenter on held-out REAL pairs (real CT against its own label map) gives the
Dice a CT that follows its labels perfectly can reach with this segmenter. A generated CT scoring near that reference
follows its labels as well as a real scan does; far below it, the generator ignored them.

    seg = fit_segmenter("real_pairs/", structures="prostate,bladder,rectum")
    reference = reference_dice(seg, "held_out_pairs/")      # {structure: {"dice", "dice_ci95", "n_cases"}}
    generated = set_dice(seg, "generated_pairs/")            # the same per structure, and per case
    per_structure = structure_dice(seg, ct_image, label_image)   # {structure: Dice or None}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from CTDiffusionLib.utility import scoring, statistics
from CTDiffusionLib.utility.segmenter import Recipe, default_iterations, make_recipe, predict, train_segmenter


@dataclass
class Segmenter:
    """A trained recipe and what it needs to segment a new CT: its working grid and its structures."""

    model: object
    recipe: Recipe
    grid_xyz: tuple
    structures: list  # data.pairs.Structure, label value = position + 1
    device: str = "cpu"

    @property
    def names(self) -> list:
        return [s.name for s in self.structures]


def fit_segmenter(train_pairs, structures=None, iterations: int | None = None, seed: int = 0,
                  device: str = "cpu") -> Segmenter:
    """The benchmark's recipe trained on real pairs (a folder in any pairs layout). `structures`: a --structures
    spec, a list of pairs.Structure (e.g. a generated set's, found in the training pairs by their sources), or None
    for every structure."""
    from CTDiffusionLib.data.pairs import select_structures
    from CTDiffusionLib.utility.volumes import discover, read_set, structures_for

    cases = discover(train_pairs, "training pairs")
    chosen = (structures_for(cases, structures, "training pairs") if isinstance(structures, (list, tuple))
              else select_structures(cases, structures))
    real, grid = read_set(cases, chosen)
    recipe = make_recipe(real[0].image.shape, [s.name for s in chosen],
                         iterations or default_iterations(len(real)))
    model = train_segmenter(real, len(chosen) + 1, recipe, seed, device)
    return Segmenter(model, recipe, grid, chosen, device)


def _scores(segmenter: Segmenter, case) -> np.ndarray:
    predicted = predict(segmenter.model, case.image, segmenter.recipe, segmenter.device)
    return scoring.score_case(predicted, case.labels, len(segmenter.structures) + 1, case.spacing_zyx)["dice"]


def structure_dice(segmenter: Segmenter, ct_image: sitk.Image, label_image: sitk.Image) -> dict:
    """{structure name: Dice of the segmenter's reading of `ct_image` against `label_image`} (None where the
    structure is absent from the label map). The label map holds the segmenter's values (structure k = k)."""
    from CTDiffusionLib.utility.volumes import to_grid

    case = to_grid("generated", ct_image, label_image, segmenter.grid_xyz, ())
    return {name: (float(d) if np.isfinite(d) else None) for name, d in zip(segmenter.names, _scores(segmenter, case))}


def set_dice(segmenter: Segmenter, pairs, flag: str = "pairs") -> dict:
    """The segmenter on every case of a pairs folder (real CT against its own labels, or a generated CT against the
    label map it was made for): {"per_structure": {name: {"dice", "dice_ci95", "n_cases"}}, "per_case": {case:
    {name: Dice or None}}}, the mean over cases with a bootstrap 95% interval over cases."""
    from CTDiffusionLib.utility.volumes import discover, read_set, structures_for

    cases = discover(pairs, flag)
    read, _ = read_set(cases, structures_for(cases, segmenter.structures, flag), segmenter.grid_xyz)
    table = np.array([_scores(segmenter, c) for c in read])  # (cases, structures)
    per_structure = {}
    for k, name in enumerate(segmenter.names):
        column = table[:, k][None]  # one "seed"
        mean, ci = statistics.mean_and_interval(column) if np.isfinite(column).any() else (None, None)
        per_structure[name] = {"dice": mean, "dice_ci95": ci, "n_cases": int(np.isfinite(column).sum())}
    per_case = {c.name: {name: (float(d) if np.isfinite(d) else None) for name, d in zip(segmenter.names, row)}
                for c, row in zip(read, table)}
    return {"per_structure": per_structure, "per_case": per_case}


def reference_dice(segmenter: Segmenter, heldout_pairs) -> dict:
    """Real-vs-real: per structure, the segmenter's Dice on held-out real pairs, with a bootstrap 95% interval over
    cases. {name: {"dice", "dice_ci95", "n_cases"}}."""
    return set_dice(segmenter, heldout_pairs, "held-out pairs")["per_structure"]
