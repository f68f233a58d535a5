"""Orchestration: load -> per-sample statistics -> set metrics judged against real-vs-real floors -> diversity ->
near-copy check -> feature distances -> per-condition breakdown -> figures -> metrics.json + report.

Floors (floors.py): the real pool is the held-out cases plus the training cases (all genuine data). Every set
metric is computed for generated vs held-out and for many random disjoint splits of the pool at the same sample
counts; the 95% interval of those splits is the floor, and a metric fails only outside it. The real-side work
(statistics, pairwise similarities, near-copy null, feature networks) depends only on the real data and the grid,
so a caller evaluating several generated sets can pass `reference_cache={}` to do it once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from CTDiffusionLib.errors import InputError
from CTDiffusionLib import stopping
from CTDiffusionLib.evaluation import floors
from CTDiffusionLib.evaluation.finite import finite_or_none, finite_values, mean_of_finite
from CTDiffusionLib.runfolder import ReportFolder, RunFolder

STAGES = ("load", "realism", "diversity", "novelty", "structures", "features", "figures", "report")
FEATURE_SEEDS = 3  # self-trained feature networks per report; Fréchet/MMD are reported over all of them


def resolve_device(device: str | None) -> str:
    """The engine's one device rule (runtime.resolve_device), as the string the evaluation code passes around."""
    from CTDiffusionLib.runtime import resolve_device as engine_device

    return str(engine_device(device))


class _Progress:
    """progress events with a simple ETA (mean time per finished stage x stages left)."""

    def __init__(self, events):
        self.events, self.t0, self.done = events, time.time(), 0

    def stage(self, name: str):
        stopping.check(f"Evaluation stopped before its {name} stage.", "Run evaluate again to get the report.")
        if self.events is not None:
            elapsed = time.time() - self.t0
            eta = elapsed / self.done * (len(STAGES) - self.done) if self.done else None
            self.events.emit("progress", phase="evaluate", step=self.done, total=len(STAGES), stage=name, eta_s=eta)
        self.done += 1




def _stats(values) -> dict:
    v = finite_values(values)
    if not v.size:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": finite_or_none(v.mean()), "std": finite_or_none(v.std()), "n": int(v.size)}


def _entry(judgement: dict, better: str, description: str, **extra) -> dict:
    return {**judgement, "better": better, "description": description, **extra}




# ------------------------------------------------------------------------------------------- inputs & reference


@dataclass
class Reference:
    """Everything that depends only on the real data (and the grid): computed once per report, or once per
    reference_cache key when several generated sets are evaluated against the same real data."""

    real: list
    train: list | None
    stats: dict  # "real" / "train" -> per-sample statistics
    pool_similarity: np.ndarray  # pairwise similarity within real + train (NaN diagonal)
    copy_null: dict | None = None  # near-copy null: {"heldout": (idx, sim), "loo": [...], "threshold": {...}}
    features: list = field(default_factory=list)  # per feature seed: (featurize, description, pool features)
    null_draws: dict = field(default_factory=dict)  # (metric, n_gen, n_ref) -> real-vs-real values of its draws

    @property
    def pool(self) -> list:
        return self.real + (self.train or [])

    @property
    def pool_stats(self) -> list:
        return self.stats["real"] + self.stats["train"]


def _load_inputs(real, generated, train, profile, run_config=None):
    """(generated set, real samples, training samples, warnings, PairedSets or None): a paired run's output (CT +
    label pairs) brings its label maps along (evaluation/paired_inputs.py)."""
    from CTDiffusionLib.evaluation.inputs import geometry_warnings, load_generated, load_reference_sets
    from CTDiffusionLib.evaluation.paired_inputs import is_pairs_folder, load_paired_inputs

    paired = None
    if is_pairs_folder(generated):
        gen, real_s, train_s, paired = load_paired_inputs(real, generated, train, profile, run_config)
    else:
        gen = load_generated(generated, profile)
        real_s, train_s = load_reference_sets(real, train, gen)
    n_pool = len(real_s) + len(train_s or [])
    if n_pool < floors.MIN_POOL or len(real_s) < 2:
        raise InputError(f"Only {len(real_s)} held-out real and {len(train_s or [])} training cases were found; the "
                         f"real-vs-real floors need at least 2 held-out and {floors.MIN_POOL} real cases in all.",
                         "Give more held-out cases with --real, and the training data with --train.")
    warnings = geometry_warnings(gen, real_s, "--real")
    if train_s:
        warnings += geometry_warnings(gen, train_s, "--train")
    return gen, real_s, train_s, warnings, paired


def _analyse_reference(gen, real_s, train_s, sim, *, device, seed, feature_weights, feature_steps, out,
                       run_config) -> Reference:
    from CTDiffusionLib.evaluation.diversity import within_set_matrix

    measures = gen.profile.evaluation_module()
    stats = {"real": [measures.sample_stats(s.array) for s in real_s],
             "train": [measures.sample_stats(s.array) for s in train_s or []]}
    pool = real_s + (train_s or [])
    ref = Reference(real_s, train_s, stats, within_set_matrix(sim, [s.array for s in pool], device))
    if train_s:
        ref.copy_null = _near_copy_null(gen, real_s, train_s, sim, device, run_config, seed)
    ref.features = _feature_spaces(gen, pool, feature_weights=feature_weights, steps=feature_steps, seed=seed,
                                   device=device, out=out)
    return ref


def _search(gen, sim, run_config):
    from CTDiffusionLib.evaluation import novelty

    space = novelty.augmentation_space(gen.profile.name, run_config)
    return novelty.AlignedSearch(sim, space, is_label=gen.profile.is_label_map), space


def _near_copy_null(gen, real_s, train_s, sim, device, run_config, seed) -> dict:
    """Aligned nearest-training similarity of genuinely new volumes: held-out cases, and training cases against the
    training cases of other patients (a seeded subset of at most MAX_LEAVE_ONE_OUT, spread over the patients)."""
    from CTDiffusionLib.evaluation import novelty

    search, space = _search(gen, sim, run_config)
    train_arrays = [s.array for s in train_s]
    if len(real_s) > novelty.MAX_HELDOUT:
        keep = np.random.default_rng(seed).choice(len(real_s), novelty.MAX_HELDOUT, replace=False)
        real_s = [real_s[i] for i in sorted(keep)]
    h_idx, h_sim = novelty.nearest(search.matrix([s.array for s in real_s], train_arrays, device))
    loo = []
    subjects = [s.meta.get("subject", s.name) for s in train_s]
    if len(set(subjects)) >= 2:
        left = np.arange(len(train_s))
        if len(left) > novelty.MAX_LEAVE_ONE_OUT:
            left = np.sort(np.random.default_rng(seed + 1).choice(len(left), novelty.MAX_LEAVE_ONE_OUT, replace=False))
        same = np.array([[subjects[i] == subjects[j] for j in range(len(train_s))] for i in left])
        loo_m = search.matrix([train_arrays[i] for i in left], train_arrays, device, exclude=same)
        l_idx, l_sim = novelty.nearest(loo_m)
        loo = [{"name": train_s[i].name, "nearest_train": train_s[int(j)].name, "similarity": float(v)}
               for i, j, v in zip(left, l_idx, l_sim)]
    null = list(h_sim) + [r["similarity"] for r in loo]
    return {"heldout": [{"name": real_s[i].name, "nearest_train": train_s[int(j)].name, "similarity": float(v)}
                        for i, (j, v) in enumerate(zip(h_idx, h_sim))],
            "leave_one_out": loo, "threshold": novelty.memorisation_threshold(null), "space": space}


def _feature_spaces(gen, pool, *, feature_weights, steps, seed, device, out) -> list:
    """Feature networks fitted on real data only (held-out + training); several seeds unless weights are given."""
    from CTDiffusionLib.evaluation.features import build_feature_space

    arrays = [s.array for s in pool]
    seeds = [seed] if feature_weights else [seed + k for k in range(FEATURE_SEEDS)]
    spaces = []
    for k, s in enumerate(seeds):
        featurize, desc = build_feature_space(
            arrays, gen.profile, weights=feature_weights, steps=steps, seed=s, device=device,
            save_to=None if (feature_weights or k) else Path(out) / "feature_net.safetensors",
            fit_name="real cases (held-out + training)")
        spaces.append((featurize, desc, featurize(arrays)))
    return spaces


def _reference(cache, key, build):
    if cache is None:
        return build()
    if key not in cache:
        cache[key] = build()
    return cache[key]


# ------------------------------------------------------------------------------------------- set metrics


def _drawn(ref: Reference, key: str, stat, split) -> tuple:
    """floors.draw, with the metric's real-vs-real draws kept in the reference: they depend only on the real pool
    and the split's sizes, so every generated set judged against the same reference (reference_cache) reuses them."""
    slot = (key, split.n_gen, split.n_ref)
    g, null = floors.draw(stat, split, ref.null_draws.get(slot))
    ref.null_draws[slot] = null
    return g, null


def _judged(ref: Reference, key: str, stat, split, sided: str, **extra) -> dict:
    return floors.judgement(*_drawn(ref, key, stat, split), sided, **extra)


def _pending(stat, sided: str) -> dict:
    """A judgement to be drawn once the metric's key is known (_resolve)."""
    return {"_stat": stat, "sided": sided}


def _resolve(entries: dict, ref: Reference, split) -> dict:
    for key, entry in entries.items():
        if "_stat" in entry:
            entry.update(_judged(ref, key, entry.pop("_stat"), split, entry["sided"]))
    return entries


def _distance(fn, gen_stats: list, ref: Reference) -> dict:
    """A distance between two sets of per-sample statistics, judged against real-vs-real splits (fails above)."""
    return _pending(floors.PairStat(fn, gen_stats, ref.stats["real"], ref.pool_stats), "upper")


def _value(fn, gen_stats: list, ref: Reference, sided: str) -> dict:
    """A value of one set (a rate, a mean), judged against the values sets of real cases reach."""
    return _pending(floors.ValueStat(fn, gen_stats, ref.stats["real"], ref.pool_stats), sided)


def _set_metrics(measures, gen_stats: list, ref: Reference, split) -> dict:
    """The profile's own set metrics (ct_realism / masks), each judged against its real-vs-real floor."""
    def distance(fn):
        return _distance(fn, gen_stats, ref)

    def value(fn, sided):
        return _value(fn, gen_stats, ref, sided)

    return _resolve(measures.set_metrics(gen_stats, ref.stats["real"], distance, value), ref, split)


def _found_metric(measures, gen_stats: list, ref: Reference, split) -> dict:
    """Share of samples with something in them: an empty or constant volume is a failure, not a '-'."""
    def share(items):
        return float(np.mean([s["found"] for s in items])) if items else None

    found = measures.FOUND
    return _resolve({found["key"]: _entry(_value(share, gen_stats, ref, "lower"), "higher",
                                          f"share of samples in which {found['what']} is found",
                                          real_value=share(ref.stats["real"]))}, ref, split)


def _diversity(gen, ref: Reference, sim, split, device, key: str) -> tuple:
    """Two-sided: mean pairwise similarity among generated samples against what sets of real cases show.
    Too high is mode collapse, too low is noise or broken anatomy."""
    from CTDiffusionLib.evaluation.diversity import pair_values, within_set_matrix

    matrices = {"gen": within_set_matrix(sim, [s.array for s in gen.samples], device), "pool": ref.pool_similarity}
    n_real = len(ref.real)

    def mean_pairs(items):  # items: (matrix name, index) of one set
        vals = pair_values(matrices[items[0][0]], [i for _, i in items]) if items else []
        return float(np.mean(vals)) if len(vals) else None

    pool_items = [("pool", k) for k in range(len(ref.pool))]
    stat = floors.ValueStat(mean_pairs, [("gen", i) for i in range(len(gen.samples))], pool_items[:n_real], pool_items)
    entry = _entry(_judged(ref, key, stat, split, "two-sided"), "within",
                   f"mean pairwise {sim.description} among generated samples against sets of real cases; above the "
                   "interval is mode collapse, below it noise or broken anatomy", real_value=stat.real_value)
    div = {"gen": pair_values(matrices["gen"]), "real": pair_values(ref.pool_similarity, list(range(n_real)))}
    return {key: entry}, div


def _memorisation(gen, ref: Reference, sim, device, run_config, seed) -> tuple:
    """Near-copies of training cases (aligned search) with the threshold from real-vs-real."""
    from CTDiffusionLib.evaluation import novelty

    per_sample = [{"name": s.name, "condition": s.condition, **s.meta} for s in gen.samples]
    memo = {"similarity": sim.description, "threshold": None, "false_flag_chance": None, "flagged": [],
            "heldout_nearest": [], "near_copies": []}
    summary = {}
    if ref.copy_null is None:
        memo["status"] = "not_checked"
        for row in per_sample:
            row.update(nearest_train=None, nearest_similarity=None, memorised=False)
        memo["gate"] = novelty.gate_sentence("not_checked", [], len(gen.samples), None)
        return memo, per_sample, summary
    null = ref.copy_null
    search, space = _search(gen, sim, run_config)
    g_idx, g_sim = novelty.nearest(search.matrix([s.array for s in gen.samples], [s.array for s in ref.train], device))
    thr = null["threshold"]
    flags = novelty.flag(g_sim, thr["threshold"])
    for row, j, v, f in zip(per_sample, g_idx, g_sim, flags):
        row.update(nearest_train=ref.train[int(j)].name, nearest_similarity=float(v), memorised=bool(f))
    near = [{"sample": r["name"], "train": r["nearest_train"], "similarity": r["nearest_similarity"]}
            for r in per_sample if r["memorised"]]
    memo.update(threshold=thr["threshold"], false_flag_chance=thr["false_flag_chance"], threshold_fit=thr["fit"],
                n_null=thr["n_null"], invariant_to=novelty.describe_space(space), flagged=[n["sample"] for n in near],
                near_copies=near, heldout_nearest=null["heldout"], train_leave_one_out_nearest=null["leave_one_out"],
                status="flagged" if near else "pass")
    memo["gate"] = novelty.gate_sentence(memo["status"], memo["flagged"], len(gen.samples), thr["threshold"],
                                         thr["false_flag_chance"], memo["invariant_to"])

    from scipy.stats import binom

    chance = thr["false_flag_chance"] or 0.0
    n = len(gen.samples)
    bounds = (0.0, float(binom.ppf(1 - floors.FAMILY_ALPHA / 2, n, chance)) / n)
    summary["memorised_fraction"] = _entry(
        {"generated": float(flags.mean()), "real_floor": chance, "interval": list(bounds), "sided": "upper",
         "verdict": floors.verdict(float(flags.mean()), bounds, "upper")},
        "lower", "share of samples that are near-copies of a training case (floor: the chance a genuinely new "
        "volume is flagged; interval: how many of this many new volumes chance alone would flag, 95%)")
    null_vals = [r["similarity"] for r in null["heldout"]] + [r["similarity"] for r in null["leave_one_out"]]
    n_held = len(null["heldout"])
    nt_split = floors.make_split(len(g_sim), n_held, len(null_vals), seed)
    stat = floors.ValueStat(lambda v: float(np.median(v)) if len(v) else None, [float(v) for v in g_sim],
                            null_vals[:n_held], null_vals)
    summary["nearest_train_similarity"] = _entry(
        floors.judged(stat, nt_split, "two-sided"), "within",
        f"median aligned nearest-training-case similarity ({sim.name}); above the interval: too close to the "
        "training set, below it: unlike any training case (noise, broken anatomy)", real_value=stat.real_value)
    return memo, per_sample, summary


def _feature_metrics(gen, ref: Reference, split) -> tuple:
    """Fréchet distance and MMD at equal sample counts, for every feature network (seed): the null draws of all
    networks are pooled into one interval, the generated value is the median over networks, and the per-network
    values are kept to show the spread."""
    from CTDiffusionLib.evaluation.distances import frechet_distance, median_bandwidth, mmd2

    n_real = len(ref.real)
    gen_feats = [featurize([s.array for s in gen.samples]) for featurize, _, _ in ref.features]
    bandwidths = [median_bandwidth(pool_f[:n_real]) for _, _, pool_f in ref.features]
    out = {}
    for key, text in (("frechet_distance", "Fréchet distance (FID formula) between feature distributions"),
                      ("mmd", "squared MMD, Gaussian kernel (bandwidth = median real feature distance)")):
        gens, nulls = [], []
        for net, (gf, (_, _, pool_f), bw) in enumerate(zip(gen_feats, ref.features, bandwidths)):
            def fn(a, b, bw=bw):
                if len(a) < 2 or len(b) < 2:
                    return None
                a, b = np.stack(a), np.stack(b)
                return frechet_distance(a, b) if key == "frechet_distance" else mmd2(a, b, bw)

            stat = floors.PairStat(fn, list(gf), list(pool_f[:n_real]), list(pool_f))
            g, null = _drawn(ref, f"{key}/network{net}", stat, split)
            gens.append(g)
            nulls += null
        g = float(np.median(gens)) if all(v is not None for v in gens) else None
        out[key] = _entry(floors.judgement(g, nulls, "upper", per_network=gens), "lower",
                          f"{text}, generated vs real at equal sample counts ({split.n_gen} vs {split.n_ref}); value "
                          f"and interval over {len(ref.features)} feature network(s)")
    return out, {"gen": gen_feats[0], "real": ref.features[0][2][:n_real]}, bandwidths[0]


# ------------------------------------------------------------------------------------------------ main entry


def run_evaluation(real, generated, out, *, train=None, profile=None, run_dir=None, feature_weights=None,
                   device="cpu", seed=0, events=None, feature_steps=None, reference_cache=None,
                   adherence=True) -> dict:
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
                         feature_steps=feature_steps, reference_cache=reference_cache, adherence=adherence)
    finally:
        torch.set_num_threads(threads)


def _run_config(run_dir) -> dict | None:
    if not run_dir:
        return None
    try:
        return json.loads(RunFolder(run_dir).config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _evaluate(real, generated, out, *, train, profile, run_dir, feature_weights, device, seed, events,
              feature_steps, reference_cache, adherence) -> dict:
    from CTDiffusionLib.evaluation.similarity import similarity_for

    progress = _Progress(events)
    progress.stage("load")
    run_config = _run_config(run_dir)
    gen, real_s, train_s, warnings, paired = _load_inputs(real, generated, train, profile, run_config)
    out = Path(out)
    ReportFolder(out).figures.mkdir(parents=True, exist_ok=True)
    measures = gen.profile.evaluation_module()
    sim = similarity_for(gen.profile, gen.samples[0].array.shape)
    key = (str(Path(real).resolve()), str(Path(train).resolve()) if train else None, gen.profile.name, gen.mode,
           gen.grid_xyz, seed, feature_steps, str(feature_weights), device, json.dumps(run_config, sort_keys=True))
    ref = _reference(reference_cache, key, lambda: _analyse_reference(
        gen, real_s, train_s, sim, device=device, seed=seed, feature_weights=feature_weights,
        feature_steps=feature_steps, out=out, run_config=run_config))
    real_s, train_s = ref.real, ref.train
    split = floors.make_split(len(gen.samples), len(real_s), len(ref.pool), seed)

    progress.stage("realism")
    gen_stats = [measures.sample_stats(s.array) for s in gen.samples]
    summary = _found_metric(measures, gen_stats, ref, split)
    summary.update(_set_metrics(measures, gen_stats, ref, split))

    progress.stage("diversity")
    div_entry, div = _diversity(gen, ref, sim, split, device, measures.DIVERSITY_KEY)
    summary.update(div_entry)

    progress.stage("novelty")
    memo, per_sample, memo_summary = _memorisation(gen, ref, sim, device, run_config, seed)
    summary.update(memo_summary)
    for row, st in zip(per_sample, gen_stats):
        row.update(measures.sample_row(st), found=st["found"])

    progress.stage("structures")
    structures = None
    if paired is not None:  # a paired run's output: HU per structure, adherence, near-copies of label maps
        from CTDiffusionLib.evaluation.structure_report import structure_report

        structures, label_summary, label_rows = structure_report(paired, gen, adherence=adherence, device=device,
                                                                 seed=seed, run_config=run_config)
        summary.update(label_summary)
        for row in per_sample:
            row.update(label_rows.get(row["name"], {}))

    progress.stage("features")
    feat_summary, features_by_set, bandwidth = _feature_metrics(gen, ref, split)
    summary.update(feat_summary)

    floors.finalise(summary)
    stats_by_set = {"gen": gen_stats, "real": ref.stats["real"], "train": ref.stats["train"]}
    notes = _notes(measures, gen, gen_stats, ref, features_by_set, split)
    from CTDiffusionLib.evaluation.conditions import per_condition

    prep = {"gen": sim.prepare([s.array for s in gen.samples]), "real": sim.prepare([s.array for s in real_s])}
    per_cond = per_condition(gen.samples, real_s, stats_by_set, features_by_set, per_sample, profile=gen.profile,
                             similarity=sim, prep=prep, bandwidth=bandwidth, device=device)
    metrics = _assemble(gen, ref, summary, per_sample, memo, div, split, notes, warnings, device, seed, sim)
    metrics.update(measures.set_summary(stats_by_set))
    if structures is not None:
        metrics["structures"] = structures
    if per_cond:
        metrics["per_condition"] = per_cond

    progress.stage("figures")
    from CTDiffusionLib.evaluation import figures

    metrics["figures"] = figures.make_all(out, gen, real_s, train_s, stats_by_set, metrics, div, run_dir=run_dir)
    if run_dir and "figures/loss_curves.png" not in metrics["figures"]:
        notes.append(f"No training loss events found in {Path(run_dir) / 'events.jsonl'}.")

    progress.stage("report")
    from CTDiffusionLib.evaluation.report import write_report

    _write_json(ReportFolder(out).metrics, metrics)
    write_report(ReportFolder(out).report, metrics)
    return metrics


def _notes(measures, gen, gen_stats, ref, features_by_set, split) -> list:
    notes = []
    missing = [s.name for s, st in zip(gen.samples, gen_stats) if not st["found"]]
    if missing:
        names = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        notes.append(f"{measures.FOUND['missing']} in {len(missing)} of {len(gen_stats)} generated volumes "
                     f"({names}): they are empty or constant ({measures.FOUND['empty']}); this is a failure of the "
                     "model, and the realism metrics of those volumes cannot be computed.")
    dim = features_by_set["gen"].shape[1]
    if min(split.n_gen, split.n_ref) < dim:
        notes.append(f"Fréchet distance and MMD use {dim}-dimensional features with {split.n_gen} vs {split.n_ref} "
                     "samples: their values are dominated by the sample count, which is why they are compared only "
                     "with real-vs-real splits of the same sizes. Prefer 100+ samples.")
    if len(ref.pool) < 12:
        notes.append(f"The floors come from {len(ref.pool)} real cases: their intervals are wide, so only large "
                     "differences can fail.")
    return notes


def _assemble(gen, ref, summary, per_sample, memo, div, split, notes, warnings, device, seed, sim) -> dict:
    verdicts = {k: e["verdict"] for k, e in summary.items()}
    failing = [k for k, v in verdicts.items() if v == "fail"]
    n_nets = len(ref.features)
    feature_desc = ref.features[0][1] + (
        f"; {n_nets} networks (seeds {seed}..{seed + n_nets - 1}): Fréchet distance and MMD pool them"
        if n_nets > 1 else "")
    metrics = {
        "profile": gen.profile.name,
        "mode": gen.mode,
        "grid_xyz": list(gen.grid_xyz),
        "device": device,
        "seed": seed,
        "counts": {"generated": len(gen.samples), "real": len(ref.real),
                   "train": len(ref.train) if ref.train else None},
        "floor": (f"range of {len(split.null)} random disjoint splits of the {len(ref.pool)} real cases "
                  f"(held-out + training) into {split.n_gen} vs {split.n_ref}, the sample counts the generated "
                  f"comparison uses; each metric's interval leaves {floors.FAMILY_ALPHA / len(summary):.2%} outside, "
                  f"so genuine real data fails any of the {len(summary)} metrics with at most "
                  f"{floors.FAMILY_ALPHA:.0%} probability (interval_95: the plain 95% interval)"),
        "feature_network": feature_desc,
        "similarity": sim.description,
        "verdict": "fail" if failing else "ok",
        "verdict_line": (f"FAIL: {len(failing)} of {len(verdicts)} metrics lie outside what real data gives: "
                         f"{', '.join(failing)}." if failing else
                         f"OK: all {len(verdicts)} metrics lie within what real data gives."),
        "verdicts": verdicts,
        "intervals": {k: e.get("interval") for k, e in summary.items()},
        "near_copies": memo.get("near_copies", []),
        "warnings": warnings,
        "summary": summary,
        "per_sample": per_sample,
        "memorisation": memo,
        "diversity": {k: {**_stats(v), "values": [float(x) for x in v]} for k, v in div.items()},
        "notes": notes,
    }
    return metrics


def _write_json(path: Path, data: dict) -> None:
    """Atomic: a reader never sees half a metrics.json."""
    from CTDiffusionLib.events import _clean
    from CTDiffusionLib.runfolder import write_json

    write_json(path, _clean(data))
