"""Per-condition breakdown (conditional models): each generated condition vs the real cases with that condition.

Conditions come from the generated sidecars ("condition": {"group": "DCM", "phase": "ED"}); a real case matches
when it carries the same values for those keys (ACDC Info.cfg gives group and phase). With few samples per
condition these numbers are indicative; set-level distances need at least two samples on each side.
"""

from __future__ import annotations

import numpy as np
from CTDiffusionLib.evaluation.finite import mean_of_finite


def _key(cond: dict) -> str:
    return ",".join(f"{k}={cond[k]}" for k in sorted(cond))


def _matches(case_cond, cond: dict) -> bool:
    return bool(case_cond) and all(str(case_cond.get(k)) == str(v) for k, v in cond.items())




def per_condition(gen_samples, real_samples, S, F, per_sample, *, profile, similarity, prep, bandwidth,
                  device) -> dict:
    from CTDiffusionLib.evaluation.distances import frechet_distance, mmd2

    groups = {}
    for i, s in enumerate(gen_samples):
        if s.condition:
            groups.setdefault(_key(s.condition), (s.condition, []))[1].append(i)
    out = {}
    for key, (cond, gi) in sorted(groups.items()):
        ri = [j for j, r in enumerate(real_samples) if _matches(r.condition, cond)]
        row = {"condition": cond, "n_generated": len(gi), "n_real": len(ri),
               "memorised": [per_sample[i]["name"] for i in gi if per_sample[i].get("memorised")]}
        if not profile.is_label_map:
            from CTDiffusionLib.evaluation.ct_realism import histogram_w1

            for prop in ("noise_hf_share", "tissue_contrast_hu"):
                row[f"{prop}_generated"] = mean_of_finite([S["gen"][i]["props"][prop] for i in gi])
                row[f"{prop}_real"] = mean_of_finite([S["real"][j]["props"][prop] for j in ri])
            if ri:
                row["hu_histogram_w1"] = histogram_w1(sum(S["gen"][i]["hist"] for i in gi),
                                                      sum(S["real"][j]["hist"] for j in ri))
        else:
            row["pass_rate_generated"] = mean_of_finite([float(S["gen"][i]["plausible"]) for i in gi])
            row["pass_rate_real"] = mean_of_finite([float(S["real"][j]["plausible"]) for j in ri])
            for st in ("LV", "RV", "MYO"):
                row[f"{st.lower()}_volume_generated"] = mean_of_finite([S["gen"][i]["volumes"][st] for i in gi])
                row[f"{st.lower()}_volume_real"] = mean_of_finite([S["real"][j]["volumes"][st] for j in ri])
        for name, idx, key_ in (("generated", gi, "gen"), ("real", ri, "real")):
            if len(idx) >= 2:
                pairs = [(a, b) for n, a in enumerate(idx) for b in idx[n + 1:]][:200]
                row[f"diversity_{name}"] = float(similarity.pairs(prep[key_], prep[key_], pairs, device).mean())
        if len(gi) >= 2 and len(ri) >= 2:
            fg, fr = F["gen"][gi], F["real"][ri]
            row["frechet_distance"] = frechet_distance(fg, fr)
            row["mmd"] = mmd2(fg, fr, bandwidth)
        out[key] = row
    return out
