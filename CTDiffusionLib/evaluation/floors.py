"""Real-vs-real floors as distributions, and the verdict rule.

Every set metric is a statistic of two sets, stat(X, Y): X plays "generated", Y plays "real" (held-out). Its floor
is what the same statistic gives when both sides are genuine real data: many random disjoint splits of the real
pool (held-out + training cases) into A and B, with |A| and |B| the sizes the generated comparison uses. That is a
permutation-style null at equal sample counts, so count-dependent statistics (Fréchet distance, MMD, histogram
distances) are compared like with like.

Verdict: "fail" when the generated value lies outside the interval: above its upper end for distances
("upper" metrics), on either side for two-sided ones (diversity, nearest-training similarity), below it for
"lower" ones (pass rates). A value that cannot be computed for the generated set (e.g. no body found) fails.

Multiplicity: a report judges about 15 metrics at once; at 95% each, genuine real data would get at least one
red mark about half the time. So the verdict interval is family-wise: each of the k metrics leaves FAMILY_ALPHA/k
outside (split over both sides for two-sided metrics), and genuine real data fails any metric with at most
FAMILY_ALPHA (5%) probability. The plain per-metric 95% interval is reported beside it ("interval_95").

When the generated or held-out set is larger than the split allows, the generated value is the median over the
same number of random subsamples at the split's sizes, so both sides are always measured at the same n.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from CTDiffusionLib.evaluation.finite import finite_or_none

DRAWS = 1000  # random splits of the real pool (enough for the ~0.2% tails of the family-wise interval)
FAMILY_ALPHA = 0.05
MIN_POOL = 4  # real cases (held-out + training) needed for a floor: two disjoint sets of at least two


@dataclass(frozen=True)
class Split:
    """Sizes and index draws shared by every metric of one report (same draws for all: comparable)."""

    n_gen: int  # |A|: the "generated" side
    n_ref: int  # |B|: the "real" side
    null: list  # [(A indices into pool, B indices into pool)] disjoint
    gen_draws: list  # [(generated indices, held-out indices into the real set)] at sizes (n_gen, n_ref)


def make_split(n_generated: int, n_real: int, n_pool: int, seed: int, draws: int = DRAWS) -> Split:
    """Sizes: the generated side as large as the generated set but at most half the pool; the real side as large
    as the held-out set but no larger than what is left of the pool."""
    n_gen = max(1, min(n_generated, n_pool // 2))
    n_ref = max(1, min(n_real, n_pool - n_gen))
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(draws):
        perm = rng.permutation(n_pool)
        null.append((perm[:n_gen], perm[n_gen:n_gen + n_ref]))
    if n_gen == n_generated and n_ref == n_real:
        gen_draws = [(np.arange(n_generated), np.arange(n_real))]
    else:
        gen_draws = [(rng.choice(n_generated, n_gen, replace=False), rng.choice(n_real, n_ref, replace=False))
                     for _ in range(draws)]
    return Split(n_gen, n_ref, null, gen_draws)




def interval(values, alpha: float = FAMILY_ALPHA, sided: str = "two-sided") -> tuple | None:
    """Percentile interval of the finite values leaving `alpha` outside: all of it above for 'upper', all below
    for 'lower', half on each side for 'two-sided' (the open side of a one-sided interval is the observed
    extreme)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if v.size < 2:
        return None
    lo_tail = {"upper": 0.0, "lower": alpha, "two-sided": alpha / 2}[sided]
    hi_tail = {"upper": alpha, "lower": 0.0, "two-sided": alpha / 2}[sided]
    return float(np.percentile(v, 100 * lo_tail)), float(np.percentile(v, 100 * (1 - hi_tail)))


def verdict(value, bounds, sided: str) -> str:
    """'ok' or 'fail'. sided: 'upper' (fail above), 'lower' (fail below), 'two-sided'."""
    value = finite_or_none(value)
    if value is None:
        return "fail"
    if bounds is None:
        return "ok"  # no floor could be drawn; the pipeline refuses pools this small, so this is a guard only
    lo, hi = bounds
    tol = 1e-9 * max(1.0, abs(hi), abs(lo))  # equal to the bound (e.g. a pass rate of 1.0 against 1.0) is inside
    if sided in ("upper", "two-sided") and value > hi + tol:
        return "fail"
    if sided in ("lower", "two-sided") and value < lo - tol:
        return "fail"
    return "ok"


def draw(stat, split: Split, null: list | None = None) -> tuple:
    """(generated value, real-vs-real null values) of one statistic over the split's draws. `stat` has
    .generated(gen_idx, real_idx) and .null(a_idx, b_idx), each returning a number or None. `null`: the null values
    drawn before for the same statistic and split sizes (they depend on real data only), reused as they are."""
    if null is None:
        null = [stat.null(a, b) for a, b in split.null]
    gen_vals = [stat.generated(g, r) for g, r in split.gen_draws]
    g = float(np.median(gen_vals)) if all(finite_or_none(v) is not None for v in gen_vals) else None
    return g, null


def judgement(generated, null, sided: str, **extra) -> dict:
    """A metric awaiting its verdict: the value, the sidedness and the raw null draws ('_null'); finalise()
    turns the draws into the floor, the intervals and the verdict once the number of metrics is known."""
    return {"generated": finite_or_none(generated), "sided": sided, "_null": list(null), **extra}


def judged(stat, split: Split, sided: str, **extra) -> dict:
    return judgement(*draw(stat, split), sided, **extra)


def finalise(summary: dict, alpha: float = FAMILY_ALPHA) -> dict:
    """Family-wise verdicts for every metric still holding its null draws (others keep their own interval)."""
    pending = [k for k, e in summary.items() if "_null" in e]
    per_metric = alpha / max(1, len(summary))
    for k in pending:
        e = summary[k]
        null = e.pop("_null")
        finite = [v for v in null if finite_or_none(v) is not None]
        bounds = interval(finite, per_metric, e["sided"])
        plain = interval(finite, 0.05, "two-sided")
        e.update(real_floor=finite_or_none(np.median(finite)) if finite else None,
                 interval=list(bounds) if bounds else None, interval_95=list(plain) if plain else None,
                 interval_level=1 - per_metric, n_draws=len(finite),
                 verdict=verdict(e["generated"], bounds, e["sided"]))
    return summary


class PairStat:
    """A distance between two sets: fn(items_a, items_b) -> float. Generated vs held-out; null: pool A vs pool B."""

    def __init__(self, fn, gen_items: list, real_items: list, pool_items: list):
        self.fn, self.gen, self.real, self.pool = fn, gen_items, real_items, pool_items

    def generated(self, gi, ri):
        return self.fn([self.gen[i] for i in gi], [self.real[i] for i in ri])

    def null(self, ai, bi):
        return self.fn([self.pool[i] for i in ai], [self.pool[i] for i in bi])


class ValueStat:
    """A value of one set, v(items) (a pass rate, a mean similarity), judged against the held-out set's value:
    generated: v(G) (measured as v(G_sub) - v(R_sub) + v(R) when subsampled); null: v(R) + v(A) - v(B), i.e. the
    values a set of real cases reaches beside the held-out one. The interval is thus on the value's own scale."""

    def __init__(self, fn, gen_items: list, real_items: list, pool_items: list):
        self.fn, self.gen, self.real, self.pool = fn, gen_items, real_items, pool_items
        self.real_value = fn(real_items)

    def _diff(self, a, b):
        if finite_or_none(a) is None or finite_or_none(b) is None or finite_or_none(self.real_value) is None:
            return None
        return self.real_value + (a - b)

    def generated(self, gi, ri):
        g = self.fn([self.gen[i] for i in gi])
        if len(ri) == len(self.real):
            return g
        return self._diff(g, self.fn([self.real[i] for i in ri]))

    def null(self, ai, bi):
        return self._diff(self.fn([self.pool[i] for i in ai]), self.fn([self.pool[i] for i in bi]))
