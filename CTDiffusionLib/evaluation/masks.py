"""Anatomical plausibility of cardiac label maps (0 bg, 1 RV, 2 MYO, 3 LV) and structure volumes.

This is the cardiac-masks profile's evaluation module (Profile.evaluation): `sample_stats`, `set_metrics`,
`sample_row` and `set_summary` are what the pipeline calls.

Each check answers True (pass), False (fail) or None (not applicable, e.g. an apical 2D slice without RV). A
sample passes when every applicable check passes. Adjacency is tested in-plane only: through-plane contact at the
apex or base (LV above background) is normal anatomy with 5-10 mm slices.
"""

from __future__ import annotations

import numpy as np
from CTDiffusionLib.evaluation.finite import mean_of_finite
from scipy import ndimage

RV, MYO, LV = 1, 2, 3
STRUCTURES = {"RV": RV, "MYO": MYO, "LV": LV}
CHECKS = {
    "one_component_per_structure": "each present structure is one connected component (26-connected in 3D)",
    "no_holes_in_cavities": "LV and RV cavities have no holes, on every slice",
    "myo_ring_on_mid_slices": "the myocardium closes a ring around the LV on the mid-ventricular slices",
    "lv_isolated": "the LV never touches the RV or background in-plane (the myocardium separates them)",
    "rv_adjacent_to_myo": "the RV touches the myocardium in-plane",
}
_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity in-plane: touching means sharing an edge


def _touches(a: np.ndarray, b: np.ndarray) -> bool:
    """Does region A share an in-plane edge with region B on any slice? (z, y, x) booleans."""
    grown = np.stack([ndimage.binary_dilation(s, _CROSS) for s in a])
    return bool((grown & ~a & b).any())


def _components(region: np.ndarray) -> int:
    return int(ndimage.label(region, structure=np.ones((3,) * region.ndim))[1])


def _mid_slices(lv: np.ndarray) -> list:
    """Middle third of the slices that contain LV (at least one): where a closed myocardial ring is expected."""
    zs = np.where(lv.any(axis=(1, 2)))[0]
    if zs.size == 0:
        return []
    lo, hi = int(np.floor(zs.size / 3)), int(np.ceil(2 * zs.size / 3))
    return list(zs[lo:max(hi, lo + 1)])


def plausibility_checks(labels: np.ndarray) -> dict:
    """Check results for one label map (z, y, x); 2D slices are (1, y, x)."""
    lab = labels if labels.ndim == 3 else labels[None]
    rv, myo, lv = lab == RV, lab == MYO, lab == LV
    bg = lab == 0
    is_2d_slice = lab.shape[0] == 1
    present = {n: bool((lab == v).any()) for n, v in STRUCTURES.items()}
    out = {}
    # a 3D stack must contain all three; a single slice may legitimately miss RV (apex) or LV (base)
    if not is_2d_slice and not all(present.values()):
        out["one_component_per_structure"] = False
    else:
        counts = [_components(lab == v) for n, v in STRUCTURES.items() if present[n]]
        out["one_component_per_structure"] = all(c == 1 for c in counts) if counts else None
    holes = []
    for region in (lv, rv):
        if region.any():
            filled = np.stack([ndimage.binary_fill_holes(s) for s in region])
            holes.append(bool((filled & ~region).any()))
    out["no_holes_in_cavities"] = (not any(holes)) if holes else None
    mids = _mid_slices(lv)
    if mids:
        # closed ring <=> filling the myocardium's holes covers the whole LV cavity
        out["myo_ring_on_mid_slices"] = all(bool(ndimage.binary_fill_holes(myo[z])[lv[z]].all()) for z in mids)
    else:
        out["myo_ring_on_mid_slices"] = None
    out["lv_isolated"] = (not _touches(lv, rv | bg)) if lv.any() else None
    out["rv_adjacent_to_myo"] = _touches(rv, myo) if rv.any() and myo.any() else None
    return out


def passes(checks: dict) -> bool:
    return all(v is not False for v in checks.values())


def pass_rates(all_checks: list) -> dict:
    """Per check: share of applicable samples that pass; plus 'all' (every applicable check passes)."""
    rates = {}
    for name in CHECKS:
        vals = [c[name] for c in all_checks if c.get(name) is not None]
        rates[name] = float(np.mean(vals)) if vals else float("nan")
    rates["all"] = float(np.mean([passes(c) for c in all_checks])) if all_checks else float("nan")
    return rates


def structure_volumes(labels: np.ndarray) -> dict:
    """Voxel counts per structure on the common grid (comparable between real and generated: same grid)."""
    return {name: int((labels == v).sum()) for name, v in STRUCTURES.items()}


# ------------------------------------------------------------------ the profile's evaluation interface
FOUND = {"key": "structure_found_rate", "what": "any heart structure (label 1..3)",
         "missing": "No heart structure found", "empty": "all background"}
DIVERSITY_KEY = "dice_diversity"


def sample_stats(labels: np.ndarray) -> dict:
    checks = plausibility_checks(labels)
    return {"checks": checks, "plausible": passes(checks), "volumes": structure_volumes(labels),
            "found": bool((labels > 0).any())}




def set_metrics(gen_stats: list, real_stats: list, distance, value) -> dict:
    """Summary entries: `distance(fn)` judges a two-set distance fn(a, b), `value(fn, sided)` a one-set value."""
    from scipy.stats import wasserstein_distance

    def rate(name):
        def fn(items):
            return pass_rates([s["checks"] for s in items])[name] if items else None
        return fn

    out = {"plausibility_pass_rate": {**value(rate("all"), "lower"), "better": "higher",
                                      "description": "share of samples passing every applicable anatomical check",
                                      "real_value": rate("all")(real_stats)}}
    for name, text in CHECKS.items():
        out[f"check_{name}"] = {**value(rate(name), "lower"), "better": "higher", "description": f"pass rate: {text}",
                                "real_value": rate(name)(real_stats)}
    for struct in STRUCTURES:
        def volumes(items, st=struct):
            return [s["volumes"][st] for s in items]

        def w1(a, b, volumes=volumes):
            return wasserstein_distance(volumes(a), volumes(b))

        out[f"{struct.lower()}_volume_w1"] = {
            **distance(w1), "better": "lower",
            "description": f"Wasserstein-1 distance between {struct} volume distributions (voxels on the common grid)",
            "generated_value": mean_of_finite(volumes(gen_stats)), "real_value": mean_of_finite(volumes(real_stats))}
    return out


def sample_row(stats: dict) -> dict:
    return {"plausible": stats["plausible"], "checks": stats["checks"], "volumes": stats["volumes"]}


def set_summary(stats_by_set: dict) -> dict:
    """metrics.json extras: pass rates and structure volume statistics per set."""
    def summ(values):
        v = np.asarray(values, float)
        return {"mean": float(v.mean()) if v.size else None, "std": float(v.std()) if v.size else None,
                "n": int(v.size)}

    present = {k: v for k, v in stats_by_set.items() if v}
    return {"mask_pass_rates": {k: pass_rates([st["checks"] for st in v]) for k, v in present.items()},
            "mask_volumes": {k: {n: summ([st["volumes"][n] for st in v]) for n in STRUCTURES}
                             for k, v in present.items()}}
