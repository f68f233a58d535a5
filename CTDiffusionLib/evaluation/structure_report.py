"""The per-structure part of the quality report, for a paired run's output (CT + label pairs): does each generated CT
put real tissue where its label map says, and are the generated label maps new?

- HU per structure: median and interquartile range of the HU under each structure, generated vs real
  (evaluation/structures.py); a structure passes when the generated median lies inside the real interquartile range.
- Adherence: a segmenter of the downstream benchmark's recipe, trained on the real training pairs (--train), segments
  each generated CT; its Dice against the label map the CT was made for, per structure, next to the same segmenter's
  Dice on the held-out real pairs (real CT against its own labels: what a CT that follows its labels reaches). A
  structure fails when the generated interval lies wholly below the real-vs-real one (utility/adherence.py).
- Near-copies of training label maps: each generated label map (new pairs, `generate --num`; a label map given with
  --from-labels is the user's, not generated) is compared with every training label map by the CT check's own
  aligned search (evaluation/novelty.py), with per-structure Dice as the similarity, and flagged above a threshold
  set from real-vs-real label maps exactly as for CT (held-out and leave-one-out training label maps).

Everything lands in metrics.json under "structures" (and the label maps' near-copy summary rows under "summary");
evaluation/structure_table.py turns it into the table's rows.
"""

from __future__ import annotations

from CTDiffusionLib.evaluation import floors

HU_CRITERION = "generated median inside the real interquartile range"
DICE_CRITERION = ("fails when the generated 95% interval lies wholly below the real-vs-real one (the segmenter on "
                  "held-out real pairs)")
LABEL_PREFIX = "label_map_"  # summary keys of the label maps' near-copy check


def _hu(paired) -> dict:
    from CTDiffusionLib.evaluation.structures import compare_structure_hu

    comparison = compare_structure_hu(paired.folders["real"], paired.folders["generated"], paired.structures)
    for entry in comparison.values():
        real, generated = entry["real"], entry["generated"]
        bounds = (real["q1"], real["q3"]) if real["median"] is not None else None
        entry["verdict"] = (floors.verdict(generated["median"], bounds, "two-sided")
                            if bounds and generated["median"] is not None else None)
    return {"criterion": HU_CRITERION, "per_structure": comparison}


def _dice_verdict(generated: dict, reference: dict) -> str | None:
    g, r = generated.get("dice_ci95"), reference.get("dice_ci95")
    if not g or not r:
        return None
    return "fail" if g[1] < r[0] else "ok"


def _adherence(paired, enabled: bool, device: str, seed: int) -> dict:
    if not enabled:
        return {"status": "not_checked", "reason": "adherence was switched off for this report"}
    if paired.folders.get("train") is None:
        return {"status": "not_checked",
                "reason": "no real training pairs (--train) to train the segmenter on"}
    from CTDiffusionLib.utility.adherence import fit_segmenter, set_dice

    segmenter = fit_segmenter(paired.folders["train"], list(paired.structures), seed=seed, device=device)
    reference = set_dice(segmenter, paired.folders["real"], "--real")
    generated = set_dice(segmenter, paired.folders["generated"], "--generated")
    per_structure = {}
    for name in segmenter.names:
        g, r = generated["per_structure"][name], reference["per_structure"][name]
        per_structure[name] = {"generated": g["dice"], "generated_ci95": g["dice_ci95"], "n_cases": g["n_cases"],
                               "reference": r["dice"], "reference_ci95": r["dice_ci95"],
                               "reference_n_cases": r["n_cases"], "verdict": _dice_verdict(g, r)}
    return {"status": "measured", "criterion": DICE_CRITERION, "per_structure": per_structure,
            "per_case": generated["per_case"], "reference_per_case": reference["per_case"],
            "segmenter": {"trained_on": str(paired.folders["train"]), "seed": seed, **segmenter.recipe.describe()}}


def _label_near_copies(paired, gen, device: str, seed: int, run_config) -> tuple[dict, dict, dict]:
    """(memorisation dict, summary entries, {case: per-sample fields}) for the generated label maps."""
    from CTDiffusionLib.evaluation import pipeline
    from CTDiffusionLib.evaluation.inputs import GeneratedSet
    from CTDiffusionLib.evaluation.similarity import similarity_for
    from CTDiffusionLib.label_sets import label_profile

    new = [s for s in paired.labels["generated"] if s.name not in set(paired.given_labels)]
    if paired.folders.get("train") is None or not new:
        reason = ("no training pairs (--train) to compare with" if new else
                  "every label map was given (--from-labels), none was generated")
        return {"status": "not_checked", "reason": reason, "flagged": [], "near_copies": []}, {}, {}
    profile = label_profile(gen.profile, paired.structures)
    labels = GeneratedSet(new, profile, "3d", gen.spacing)
    sim = similarity_for(profile, new[0].array.shape)
    real, train = paired.labels["real"], paired.labels["train"]
    null = pipeline._near_copy_null(labels, real, train, sim, device, run_config, seed)
    reference = pipeline.Reference(real, train, {}, None, copy_null=null)
    memo, per_sample, summary = pipeline._memorisation(labels, reference, sim, device, run_config, seed)
    memo["gate"] = "Label maps: " + memo["gate"]
    memo["checked"] = [s.name for s in new]
    summary = {LABEL_PREFIX + key: {**entry, "description": "label maps: " + entry["description"]}
               for key, entry in summary.items()}
    rows = {r["name"]: {"label_nearest_train": r["nearest_train"], "label_nearest_similarity": r["nearest_similarity"],
                        "label_memorised": r["memorised"]} for r in per_sample}
    return memo, summary, rows


def structure_report(paired, gen, *, adherence: bool = True, device: str = "cpu", seed: int = 0,
                     run_config: dict | None = None) -> tuple[dict, dict, dict]:
    """(metrics.json "structures" section, summary entries to judge with the other metrics, per-sample fields)."""
    memo, summary, rows = _label_near_copies(paired, gen, device, seed, run_config)
    section = {"structures": [s.to_dict() for s in paired.structures], "hu": _hu(paired),
               "adherence": _adherence(paired, adherence, device, seed), "label_memorisation": memo,
               "given_label_maps": list(paired.given_labels)}
    return section, summary, rows
