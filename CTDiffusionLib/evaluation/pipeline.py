"""Orchestration: load -> per-sample statistics -> set comparisons (each with its real-vs-real floor) ->
diversity -> memorisation gate -> feature distances -> per-condition breakdown -> figures -> metrics.json + report.

The floor: every set distance is computed twice, generated vs real (held-out) and train vs real (held-out), so the
reader sees how far apart two genuine samples of real data already are. Without --train the floor is the distance
between two halves of the real set (seeded split), which is noisier and is said so in the report.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from CTDiffusionLib.errors import InputError

STAGES = ("load", "realism", "diversity", "novelty", "features", "figures", "report")


def resolve_device(device: str) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device} was asked for but no CUDA GPU is available.", "Use --device cpu or auto.")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device {device!r} is not a device.", "Use auto, cpu, cuda or cuda:N.")
    return device


class _Progress:
    """progress events with a simple ETA (mean time per finished stage x stages left)."""

    def __init__(self, events):
        self.events, self.t0, self.done = events, time.time(), 0

    def stage(self, name: str):
        if self.events is not None:
            elapsed = time.time() - self.t0
            eta = elapsed / self.done * (len(STAGES) - self.done) if self.done else None
            self.events.emit("progress", phase="evaluate", step=self.done, total=len(STAGES), stage=name, eta_s=eta)
        self.done += 1


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _entry(generated, floor, better, description, **extra) -> dict:
    return {"generated": _finite(generated) if generated is not None else None,
            "real_floor": _finite(floor) if floor is not None else None,
            "better": better, "description": description, **extra}


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    return {"mean": _finite(v.mean()) if v.size else None, "std": _finite(v.std()) if v.size else None, "n": int(v.size)}


# ---------------------------------------------------------------------------------------- per-sample statistics


def _ct_sample_stats(arr):
    from CTDiffusionLib.evaluation import ct_realism as ct

    mask = ct.body_mask(arr)
    freqs, power = ct.radial_spectrum(arr)
    hist = ct.hu_histogram([arr], [mask])
    return {"props": ct.ct_properties(arr, mask), "hist": hist, "freqs": freqs, "spectrum": power}


def _mask_sample_stats(arr):
    from CTDiffusionLib.evaluation import masks

    checks = masks.plausibility_checks(arr)
    return {"checks": checks, "plausible": masks.passes(checks), "volumes": masks.structure_volumes(arr)}


# ------------------------------------------------------------------------------------------- set comparisons


def _ct_set_metrics(S: dict, G: list, R: list, FA: list | None, FB: list | None) -> dict:
    """S: per-sample stats by set name; G/R/FA/FB: index lists into ('gen'|'real'|'train', i) pairs."""
    from CTDiffusionLib.evaluation import ct_realism as ct

    def hist(ix):
        return sum(S[s][i]["hist"] for s, i in ix)

    def mean(ix, prop):
        return _stats([S[s][i]["props"][prop] for s, i in ix])["mean"]

    have_floor = bool(FA) and bool(FB)
    out = {"hu_histogram_w1": _entry(
        ct.histogram_w1(hist(G), hist(R)), ct.histogram_w1(hist(FA), hist(FB)) if have_floor else None, "lower",
        "Wasserstein-1 distance (HU) between body HU histograms, generated vs real")}
    labels = {"tissue_contrast_hu": "tissue contrast: HU standard deviation of body voxels in -200..300 HU",
              "noise_hf_share": f"noise: share of in-plane power above {ct.HF_CUTOFF} cycles/pixel",
              "glcm_contrast": "GLCM texture contrast (16 levels of -200..300 HU, in-plane neighbours)",
              "glcm_homogeneity": "GLCM texture homogeneity"}
    for prop, text in labels.items():
        g, r = mean(G, prop), mean(R, prop)
        floor = abs(mean(FA, prop) - mean(FB, prop)) if have_floor and None not in (mean(FA, prop), mean(FB, prop)) else None
        out[f"{prop}_gap"] = _entry(abs(g - r) if None not in (g, r) else None, floor, "lower",
                                    f"|mean generated - mean real| of the {text}", generated_value=g, real_value=r)
    return out


def _mask_set_metrics(S, G, R, FA, FB) -> dict:
    from scipy.stats import wasserstein_distance

    from CTDiffusionLib.evaluation import masks

    def rates(ix):
        return masks.pass_rates([S[s][i]["checks"] for s, i in ix])

    gr, rr = rates(G), rates(R)
    out = {"plausibility_pass_rate": _entry(gr["all"], rr["all"], "higher",
                                            "share of samples passing every applicable anatomical check "
                                            "(real_floor: the real set's own pass rate)")}
    for name, text in masks.CHECKS.items():
        out[f"check_{name}"] = _entry(gr[name], rr[name], "higher", f"pass rate: {text}")
    have_floor = bool(FA) and bool(FB)
    for struct in masks.STRUCTURES:
        def vols(ix, st=struct):
            return [S[s][i]["volumes"][st] for s, i in ix]

        out[f"{struct.lower()}_volume_w1"] = _entry(
            wasserstein_distance(vols(G), vols(R)),
            wasserstein_distance(vols(FA), vols(FB)) if have_floor else None, "lower",
            f"Wasserstein-1 distance between {struct} volume distributions (voxels on the common grid)",
            generated_value=_stats(vols(G))["mean"], real_value=_stats(vols(R))["mean"])
    return out


def _feature_metrics(F: dict, G, R, FA, FB) -> dict:
    from CTDiffusionLib.evaluation.distances import frechet_distance, median_bandwidth, mmd2

    def feats(ix):
        return np.stack([F[s][i] for s, i in ix]) if ix else np.zeros((0, 1))

    ref = feats(R)
    bw = median_bandwidth(ref)
    ok = len(G) >= 2 and len(R) >= 2
    ok_floor = bool(FA) and bool(FB) and len(FA) >= 2 and len(FB) >= 2
    return {
        "frechet_distance": _entry(frechet_distance(feats(G), ref) if ok else None,
                                   frechet_distance(feats(FA), feats(FB)) if ok_floor else None, "lower",
                                   "Fréchet distance (FID formula) between feature distributions, generated vs real"),
        "mmd": _entry(mmd2(feats(G), ref, bw) if ok else None, mmd2(feats(FA), feats(FB), bw) if ok_floor else None,
                      "lower", f"squared MMD, Gaussian kernel (bandwidth {bw:.3g} = median real feature distance)"),
    }, bw


# ------------------------------------------------------------------------------------------------ main entry


def run_evaluation(real, generated, out, *, train=None, profile=None, run_dir=None, feature_weights=None,
                   device="cpu", seed=0, events=None, feature_steps=None, max_pairs=None) -> dict:
    import os

    import torch

    device = resolve_device(device)
    # Small convolutions gain nothing from many threads, and on a shared CPU (or beside a training job) an
    # oversubscribed OpenMP pool is 10-30x slower than one thread. Use half the cores, restore afterwards.
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) // 2)))
    try:
        return _evaluate(real, generated, out, train=train, profile=profile, run_dir=run_dir,
                         feature_weights=feature_weights, device=device, seed=seed, events=events,
                         feature_steps=feature_steps, max_pairs=max_pairs)
    finally:
        torch.set_num_threads(threads)


def _evaluate(real, generated, out, *, train, profile, run_dir, feature_weights, device, seed, events,
              feature_steps, max_pairs) -> dict:
    from CTDiffusionLib.evaluation import diversity, novelty
    from CTDiffusionLib.evaluation.inputs import load_generated, load_reference_sets
    from CTDiffusionLib.evaluation.similarity import similarity_for

    progress = _Progress(events)
    progress.stage("load")
    gen = load_generated(generated, profile)
    real_s, train_s = load_reference_sets(real, train, gen)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    is_ct = gen.profile == "prostate-ct"
    sets = {"gen": gen.samples, "real": real_s, "train": train_s or []}
    notes = []

    # which samples form the floor pair
    G = [("gen", i) for i in range(len(gen.samples))]
    R = [("real", i) for i in range(len(real_s))]
    if train_s:
        FA, FB = [("train", i) for i in range(len(train_s))], R
        floor_text = "held-out real vs train"
    elif len(real_s) >= 2:
        perm = np.random.default_rng(seed).permutation(len(real_s))
        half = len(real_s) // 2
        FA, FB = [("real", int(i)) for i in perm[:half]], [("real", int(i)) for i in perm[half:]]
        floor_text = "two halves of the real set (no --train given: a noisier floor)"
    else:
        FA = FB = None
        floor_text = "none (a single real case: no floor)"
        notes.append("Only one real case: real-vs-real floors cannot be computed.")

    progress.stage("realism")
    per_stats = _ct_sample_stats if is_ct else _mask_sample_stats
    S = {k: [per_stats(s.array) for s in v] for k, v in sets.items()}
    summary = (_ct_set_metrics if is_ct else _mask_set_metrics)(S, G, R, FA, FB)

    progress.stage("diversity")
    sim = similarity_for(gen.profile, gen.samples[0].array.shape)
    prep = {k: sim.prepare([s.array for s in v]) if v else None for k, v in sets.items()}
    div = {k: diversity.pairwise_similarity(sim, prep[k], max_pairs=max_pairs, seed=seed, device=device)
           for k in ("gen", "real") if prep[k] is not None}
    div_name = "ms_ssim_diversity" if is_ct else "dice_diversity"
    summary[div_name] = _entry(
        div["gen"].mean() if div["gen"].size else None, div["real"].mean() if div["real"].size else None, "lower",
        f"mean pairwise {sim.description} among generated samples (real_floor: among real ones); far above the "
        "real value means mode collapse")

    progress.stage("novelty")
    per_sample = [{"name": s.name, "condition": s.condition, **s.meta} for s in gen.samples]
    memo = {"similarity": sim.description, "percentile": novelty.PERCENTILE, "threshold": None, "flagged": [],
            "heldout_nearest": []}
    if train_s:
        g_idx, g_sim = novelty.nearest(sim.matrix(prep["gen"], prep["train"], device))
        r_idx, r_sim = novelty.nearest(sim.matrix(prep["real"], prep["train"], device))
        threshold = novelty.memorisation_threshold(r_sim)
        flags = novelty.flag(g_sim, threshold)
        for row, j, v, f in zip(per_sample, g_idx, g_sim, flags):
            row.update(nearest_train=train_s[j].name, nearest_similarity=float(v), memorised=bool(f))
        memo.update(threshold=threshold, flagged=[r["name"] for r in per_sample if r["memorised"]],
                    heldout_nearest=[{"name": real_s[i].name, "nearest_train": train_s[j].name, "similarity": float(v)}
                                     for i, (j, v) in enumerate(zip(r_idx, r_sim))])
        memo["status"] = "flagged" if memo["flagged"] else "pass"
        summary["memorised_fraction"] = _entry(
            flags.mean(), novelty.flag(r_sim, threshold).mean(), "lower",
            "share of samples closer to a training case than 95% of held-out real cases (real_floor: held-out cases "
            "beyond their own threshold)")
        summary["nearest_train_similarity"] = _entry(
            np.median(g_sim), np.median(r_sim), "lower",
            f"median nearest-training-case similarity ({sim.name}); generated vs held-out real")
        if len(real_s) < 20:
            notes.append(f"The memorisation threshold rests on only {len(real_s)} held-out cases; its 95th percentile "
                         "is close to their maximum.")
    else:
        memo["status"] = "not_checked"
        for row in per_sample:
            row.update(nearest_train=None, nearest_similarity=None, memorised=False)
    memo["gate"] = novelty.gate_sentence(memo["status"], memo["flagged"], len(gen.samples), memo["threshold"])
    for row, st in zip(per_sample, S["gen"]):
        row.update(st["props"] if is_ct else {"plausible": st["plausible"], "checks": st["checks"],
                                              "volumes": st["volumes"]})

    progress.stage("features")
    from CTDiffusionLib.evaluation.features import build_feature_space

    fit_key = "train" if train_s else "real"
    featurize, feature_desc = build_feature_space(
        [s.array for s in sets[fit_key]], gen.profile, weights=feature_weights, steps=feature_steps, seed=seed,
        device=device, save_to=None if feature_weights else out / "feature_net.safetensors",
        fit_name="training set" if train_s else "real set (no --train given)")
    F = {k: featurize([s.array for s in v]) if v else None for k, v in sets.items()}
    feat_metrics, bandwidth = _feature_metrics(F, G, R, FA, FB)
    summary.update(feat_metrics)
    dim = next(f for f in F.values() if f is not None).shape[1]
    if min(len(G), len(R)) < dim:
        notes.append(f"Fréchet distance and MMD use {dim}-dimensional features but only {min(len(G), len(R))} "
                     "samples on one side: the covariances are rank-deficient and the values are dominated by "
                     "sampling noise. Read them only against their real floor, and prefer 100+ samples.")

    from CTDiffusionLib.evaluation.conditions import per_condition

    per_cond = per_condition(gen.samples, real_s, S, F, per_sample, is_ct=is_ct, similarity=sim, prep=prep,
                             bandwidth=bandwidth, device=device)

    metrics = {
        "profile": gen.profile,
        "mode": gen.mode,
        "grid_xyz": list(gen.grid_xyz),
        "device": device,
        "seed": seed,
        "counts": {"generated": len(gen.samples), "real": len(real_s), "train": len(train_s) if train_s else None},
        "floor": floor_text,
        "feature_network": feature_desc,
        "similarity": sim.description,
        "summary": summary,
        "per_sample": per_sample,
        "memorisation": memo,
        "diversity": {k: {**_stats(v), "values": [float(x) for x in v]} for k, v in div.items()},
        "notes": notes,
    }
    if is_ct:
        metrics["ct_properties"] = {k: {p: _stats([st["props"][p] for st in S[k]])
                                        for p in S[k][0]["props"]} for k in sets if S[k]}
    else:
        from CTDiffusionLib.evaluation import masks as mk

        metrics["mask_pass_rates"] = {k: mk.pass_rates([st["checks"] for st in S[k]]) for k in sets if S[k]}
        metrics["mask_volumes"] = {k: {st_name: _stats([st["volumes"][st_name] for st in S[k]])
                                       for st_name in mk.STRUCTURES} for k in sets if S[k]}
    if per_cond:
        metrics["per_condition"] = per_cond

    progress.stage("figures")
    from CTDiffusionLib.evaluation import figures

    metrics["figures"] = figures.make_all(out, gen, real_s, train_s, S, metrics, div, run_dir=run_dir)
    if run_dir and "figures/loss_curves.png" not in metrics["figures"]:
        notes.append(f"No training loss events found in {Path(run_dir) / 'events.jsonl'}.")

    progress.stage("report")
    from CTDiffusionLib.evaluation.report import write_report

    _write_json(out / "metrics.json", metrics)
    write_report(out / "report.html", metrics)
    return metrics


def _write_json(path: Path, data: dict) -> None:
    """Atomic (temp file then rename): a reader never sees half a metrics.json."""
    from CTDiffusionLib.events import _clean

    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2), encoding="utf-8")
    tmp.replace(path)
