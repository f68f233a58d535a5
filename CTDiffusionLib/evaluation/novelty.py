"""Novelty / memorisation: near-copies of training cases, invariant to what training augmentation does.

Training shows the network zoomed, flipped (and, for masks, rotated) versions of each case, so a memorised sample
can come out as any of those, shifted by a voxel or two. Comparing slice k with slice k of the untouched training
case misses all of them. So each (sample, training case) pair is also compared after aligning the training case to
the sample: a start from matched foreground areas (zoom) and centres of mass (shift), then the zoom, rotation
(within the augmentation's range) and shift that maximise the cross-correlation, for the better flip
(AlignedSearch). The pair's similarity is the best of the aligned and the untouched comparison (an exact copy
scores exactly 1). Copies turned by a quarter turn (90/180/270 degrees) or flipped front to back are searched too,
whatever the augmentation (a turned copy is still that patient's scan); such a candidate counts from
TURNED_COPY_SIMILARITY on, so a new volume that merely resembles a turned training case does not raise the
real-vs-real threshold.

The threshold comes from real-vs-real: the same aligned nearest-training similarity for every held-out real case
and, leave-one-out, for training cases against the training cases of other patients; those are genuinely new
volumes. Leaving out only the case itself would compare an ACDC ED frame with its own patient's ES frame, and a 2D
slice with the neighbouring slices of its own stack: not new anatomy, and near-copies in all but name, which would
lift the threshold above what an augmented copy of a training case scores. A normal
fit to log(1 - similarity) (similarity is bounded by 1) gives the threshold at which a new volume is flagged with
probability FALSE_FLAG_RATE, never below the largest value observed, and the report states that probability.
Exact copies (identical arrays, or similarity >= COPY_SIMILARITY) are always flagged.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

FALSE_FLAG_RATE = 0.001  # chance that a genuinely new volume is flagged, under the normal fit
COPY_SIMILARITY = 1.0 - 1e-6
MAX_LEAVE_ONE_OUT = 24  # training cases used as extra real-vs-real cases (cost grows with n_train^2)
MAX_HELDOUT = 48  # held-out cases searched for the null (a seeded subset beyond that: 2D slices number hundreds)
CT_FOREGROUND_HU = -400.0  # body vs air, as ct_realism.BODY_THRESHOLD_HU
QUARTER_TURNS = (0.0, 90.0, 180.0, 270.0)  # in-plane, searched always (privacy: a turned copy is a copy)


def augmentation_space(profile, run_config: dict | None = None) -> dict:
    """What to be invariant to: the run's own augmentation when its config.json is known, else the widest
    setting among the profile's presets. In-plane flips and quarter turns are always searched, whatever the
    augmentation: a scan mirrored front to back or turned by 90 or 180 degrees is still that patient's scan."""
    from CTDiffusionLib.presets import PRESETS

    augs = [p.get("augment") or {} for p in PRESETS.get(profile, {}).values()]
    if run_config and isinstance((run_config.get("data") or {}).get("augment"), dict):
        augs = [run_config["data"]["augment"]]
    zooms = [a["zoom"] for a in augs if a.get("zoom")]
    lo = min([z[0] for z in zooms], default=1.0)
    hi = max([z[1] for z in zooms], default=1.0)
    rot = max([float(a.get("rotate_deg") or 0.0) for a in augs], default=0.0)
    angles = [0.0] if rot <= 0 else list(np.linspace(-rot, rot, 2 * int(math.ceil(rot / 5.0)) + 1))
    return {"zoom": (float(lo), float(hi)), "angles_deg": [float(a) for a in angles], "flip": True,
            "quarter_turns": list(QUARTER_TURNS)}


def describe_space(space: dict) -> str:
    lo, hi = space["zoom"]
    ang = space["angles_deg"]
    rot = f", in-plane rotation {ang[0]:+.0f}..{ang[-1]:+.0f} deg" if len(ang) > 1 else ""
    turns = ", quarter turns (90, 180, 270 deg)" if len(space.get("quarter_turns", [0])) > 1 else ""
    return f"in-plane flips (left-right, front-back){turns}, in-plane zoom {lo:g}..{hi:g}{rot} and shifts"


def _foreground(arr: np.ndarray, is_label: bool) -> np.ndarray:
    return arr > 0 if is_label else arr > CT_FOREGROUND_HU


def _shift_z(a: np.ndarray, dz: int) -> np.ndarray:
    """Whole-slice shift with the edge slice repeated (slices are thick: only whole-slice shifts are searched)."""
    if dz == 0:
        return a
    idx = np.clip(np.arange(a.shape[0]) - dz, 0, a.shape[0] - 1)
    return a[idx]


class AlignedSearch:
    """Best similarity of each target against each reference over the augmentation's transforms.

    For each target, the PREFILTER references with the nearest transform-free signature (value distribution in the
    foreground) and the best untouched match are searched. Per (target, reference) the reference is warped in-plane (flip, zoom, rotation about the grid centre, shift) to
    maximise the normalised cross-correlation with the target: a coarse grid over flips, zooms and angles with
    the shift that matches the centres of mass, then two finer grids around the best (zoom, angle, sub-voxel
    shift); whole-slice shifts come from the centres of mass (at most MAX_Z_SHIFT). All candidates of a grid are
    warped at once (torch grid_sample) on a copy of at most SEARCH_INPLANE px in-plane. The TOP_REFS references
    with the best coarse score are refined, and scored with the report's similarity at full resolution; the
    untouched comparison counts too (an exact copy scores exactly 1)."""

    TOP_REFS = 2
    PREFILTER = 12  # references per target that get the coarse search: the nearest by a transform-free signature
    SEARCH_INPLANE = 64
    MAX_Z_SHIFT = 2
    TURNED_COPY_SIMILARITY = 0.99  # a turned/front-back flipped candidate counts from here on (a copy, not a likeness)
    TURNED_MIN_FOREGROUND = 0.05  # share of the target's voxels in the foreground for a turned match to count
    CHUNK_VOXELS = 8_000_000  # voxels warped per call (bounds memory)

    def __init__(self, similarity, space: dict, is_label: bool):
        self.sim, self.space, self.is_label = similarity, space, is_label

    def _window(self, a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        return a if self.is_label else np.clip(a, -1000.0, 1000.0)

    def _signature(self, a: np.ndarray) -> np.ndarray:
        """What flips, zoom, rotation and shifts leave (nearly) unchanged: the value distribution inside the
        foreground (label proportions; a 32-bin HU histogram)."""
        fg = _foreground(a, self.is_label)
        v = a[fg]
        if self.is_label:
            h = np.bincount(v.astype(np.int64), minlength=int(a.max()) + 1 if a.size else 1)[1:].astype(float)
            h = np.pad(h, (0, max(0, 16 - h.size)))[:16]
        else:
            h = np.histogram(v, bins=32, range=(CT_FOREGROUND_HU, 1000.0))[0].astype(float)
        return h / h.sum() if h.sum() > 0 else h

    def _com(self, a: np.ndarray) -> np.ndarray:
        fg = _foreground(a, self.is_label)
        return np.array(ndimage.center_of_mass(fg)) if fg.any() else (np.array(a.shape, float) - 1) / 2

    def _area(self, a: np.ndarray) -> float:
        return float(_foreground(a, self.is_label).sum())

    @staticmethod
    def _thetas(params: np.ndarray, shape: tuple) -> "torch.Tensor":
        """(N, 2, 3) affine_grid matrices for params rows (flip, scale, angle_deg, dy, dx): output pixel q shows
        input pixel p with q = c + A (F(p) - c) + d, A = scale * rotation, F the left-right flip. In (x, y) order
        and normalised coordinates (align_corners=True: -1 and 1 are the outer pixel centres)."""
        import torch

        h, w = shape[-2:]
        half = np.array([(w - 1) / 2, (h - 1) / 2])
        flip, scale, th = params[:, 0], params[:, 1], np.deg2rad(params[:, 2])
        cos, sin = np.cos(th) / scale, np.sin(th) / scale
        ainv = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # inverse of scale * R(th)
        m = ainv * (half[None, None, :] / half[None, :, None])  # diag(1/half) @ ainv @ diag(half)
        t = -np.einsum("nij,nj->ni", ainv, params[:, [4, 3]]) / half[None]
        sign = np.where(flip > 0.5, -1.0, 1.0)
        m[:, 0, :] *= sign[:, None]
        t[:, 0] *= sign
        return torch.tensor(np.concatenate([m, t[:, :, None]], axis=2), dtype=torch.float32)

    def _warp(self, src, params: np.ndarray, nearest: bool = False, which=None) -> "torch.Tensor":
        """src (Z, H, W) -- or a stack (R, Z, H, W) with `which` naming the source of each row -- warped by every
        params row -> (N, Z, H, W)."""
        import torch
        import torch.nn.functional as nnf

        x = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))
        if which is None:
            x, which = x[None], np.zeros(len(params), dtype=int)
        outs = []
        chunk = max(1, self.CHUNK_VOXELS // int(np.prod(x.shape[1:])))
        for k in range(0, len(params), chunk):
            theta = self._thetas(params[k:k + chunk], x.shape)
            grid = nnf.affine_grid(theta, [len(theta), *x.shape[1:]], align_corners=True)
            outs.append(nnf.grid_sample(x[torch.from_numpy(which[k:k + chunk])], grid, align_corners=True,
                                        mode="nearest" if nearest else "bilinear", padding_mode="border"))
        return torch.cat(outs)

    @staticmethod
    def _ncc(target: np.ndarray, warped: "torch.Tensor") -> np.ndarray:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)).flatten()
        t = t - t.mean()
        w = warped.flatten(1)
        w = w - w.mean(dim=1, keepdim=True)
        den = torch.sqrt((w * w).sum(1) * (t * t).sum()).clamp_min(1e-12)
        return ((w * t).sum(1) / den).double().numpy()

    def _com_shift(self, flip, scale, ang, com_r, com_t, shape) -> tuple:
        """In-plane shift that puts the warped reference's centre of mass on the target's."""
        c = (np.array(shape[-2:], float) - 1) / 2
        r = np.array(com_r[-2:], float)
        if flip:
            r[1] = shape[-1] - 1 - r[1]
        th = math.radians(ang)
        a = scale * np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])  # (y, x) order
        d = np.array(com_t[-2:], float) - (c + a @ (r - c))
        return float(d[0]), float(d[1])

    def _coarse_rows(self, shape, com_t, com_r, area_t, area_r) -> list:
        """Coarse candidates for one pair: flips x zooms (a grid over the range and the area estimate) x angles,
        each with the shift that matches the centres of mass."""
        lo, hi = self.space["zoom"]
        est = math.sqrt(area_t / area_r) if area_r > 0 and area_t > 0 else 1.0
        est = min(max(est, lo * 0.95), hi * 1.05)
        scales = sorted({*np.round(np.linspace(lo * 0.95, hi * 1.05, 9), 4), round(est, 4)})
        return [(flip, sc, ang, *self._com_shift(flip, sc, ang, com_r, com_t, shape))
                for flip in ((0.0, 1.0) if self.space.get("flip") else (0.0,))
                for sc in scales for ang in self.space["angles_deg"]]

    def _turned_rows(self, shape, com_t, com_r, area_t, area_r) -> list:
        """Candidates for a turned copy: both flips x the quarter turns other than 0 (a left-right flip with a half
        turn is the front-back flip, so all eight in-plane flips/turns are covered), at the area's zoom estimate."""
        est = math.sqrt(area_t / area_r) if area_r > 0 and area_t > 0 else 1.0
        return [(flip, est, turn, *self._com_shift(flip, est, turn, com_r, com_t, shape))
                for flip in (0.0, 1.0) for turn in self.space.get("quarter_turns", ()) if turn % 360]

    def _refine(self, t_small, r_small, best: np.ndarray) -> np.ndarray:
        rot = max(abs(a) for a in self.space["angles_deg"])
        for ds, da, dd in ((0.02, 2.5, 1.0), (0.007, 1.0, 0.35)):
            grid = []
            for s_ in (-ds, 0.0, ds):
                for a_ in ((-da, 0.0, da) if rot > 0 else (0.0,)):
                    for y_ in (-dd, -dd / 2, 0.0, dd / 2, dd):
                        for x_ in (-dd, -dd / 2, 0.0, dd / 2, dd):
                            grid.append(best + np.array([0.0, s_, a_, y_, x_]))
            grid = np.array(grid)
            scores = self._ncc(t_small, self._warp(r_small, grid))
            best = grid[int(np.argmax(scores))]
        return best

    def matrix(self, targets: list, refs: list, device: str = "cpu", exclude: np.ndarray | None = None
               ) -> np.ndarray:
        """(len(targets), len(refs)) similarities: the aligned score for each target's TOP_REFS references, the
        untouched one elsewhere; -inf where `exclude` (a boolean (targets, refs) array) is True: leave-one-out,
        the target's own patient."""
        shape = targets[0].shape
        factor = max(1.0, max(shape[1:]) / self.SEARCH_INPLANE)
        small = (lambda a: ndimage.zoom(a, (1, 1 / factor, 1 / factor), order=1)) if factor > 1 else (lambda a: a)
        t_small = [small(self._window(t)) for t in targets]
        r_small = [small(self._window(r)) for r in refs]
        # ndimage.zoom keeps the outer voxel centres: full-resolution shift = small shift * (n - 1) / (m - 1)
        per_axis = (np.array(shape[1:], float) - 1) / np.maximum(np.array(t_small[0].shape[1:], float) - 1, 1)
        t_com, r_com = [self._com(t) for t in t_small], [self._com(r) for r in r_small]
        t_area, r_area = [self._area(t) for t in t_small], [self._area(r) for r in r_small]
        out = self.sim.matrix(self.sim.prepare(targets), self.sim.prepare(refs), device)
        if exclude is not None:
            out[np.asarray(exclude, bool)] = -np.inf
        t_sig, r_sig = [self._signature(t) for t in t_small], np.array([self._signature(r) for r in r_small])
        for i, t in enumerate(targets):
            # coarse candidates of the PREFILTER references with the nearest signatures, plus the best untouched
            # match, in one batched warp; best candidate per reference
            allowed = np.isfinite(out[i])
            if not allowed.any():
                continue
            dist = np.where(allowed, np.abs(r_sig - t_sig[i]).sum(1), np.inf)
            near = set(np.argsort(dist, kind="stable")[:self.PREFILTER].tolist())
            near.add(int(np.argmax(out[i])))
            rows, which, sources, dzs, kinds = [], [], [], {}, []
            for j, r in enumerate(refs):
                if not allowed[j]:
                    continue
                if t.shape == r.shape and np.array_equal(t, r):
                    out[i, j] = 1.0
                    continue
                if j not in near:
                    continue
                dzs[j] = int(np.clip(round(t_com[i][0] - r_com[j][0]), -self.MAX_Z_SHIFT, self.MAX_Z_SHIFT))
                cand = self._coarse_rows(t_small[i].shape, t_com[i], r_com[j], t_area[i], r_area[j])
                turned = self._turned_rows(t_small[i].shape, t_com[i], r_com[j], t_area[i], r_area[j])
                rows += cand + turned
                kinds += [False] * len(cand) + [True] * len(turned)
                which += [len(sources)] * (len(cand) + len(turned))
                sources.append(_shift_z(r_small[j], dzs[j]))
            if not sources:
                continue
            rows, which, kinds = np.array(rows), np.array(which), np.array(kinds)
            scores = self._ncc(t_small[i], self._warp(np.stack(sources), rows, which=which))
            coarse, turned = [], []
            for n, j in enumerate(dzs):
                k = int(np.argmax(np.where((which == n) & ~kinds, scores, -np.inf)))
                coarse.append((scores[k], j, dzs[j], rows[k]))
                k = int(np.argmax(np.where((which == n) & kinds, scores, -np.inf)))
                turned.append((scores[k], j, dzs[j], rows[k]))
            for _, j, dz, params in sorted(coarse, key=lambda c: -c[0])[:self.TOP_REFS]:
                out[i, j] = max(out[i, j], self._aligned_score(t, t_small[i], refs[j], r_small[j], dz, params,
                                                               per_axis, device))
            # A turned or front-back flipped copy counts only as the copy it is: training never turns a case, so
            # a new volume that resembles a turned training case (round hearts, symmetric pelves) must not lift
            # the real-vs-real threshold and hide augmented copies.
            # Nor does a tiny foreground (an apical slice's few voxels), which some turn of another case matches.
            big_enough = _foreground(t, self.is_label).mean() >= self.TURNED_MIN_FOREGROUND
            for ncc, j, dz, params in sorted(turned, key=lambda c: -c[0])[:self.TOP_REFS if big_enough else 0]:
                if ncc >= self.TURNED_COPY_SIMILARITY - 0.05:
                    score = self._aligned_score(t, t_small[i], refs[j], r_small[j], dz, params, per_axis, device)
                    if score >= self.TURNED_COPY_SIMILARITY:
                        out[i, j] = max(out[i, j], score)
        return out

    def _aligned_score(self, t, t_small, ref, r_small, dz, params, per_axis, device) -> float:
        """Refine a coarse candidate on the small grids, then score the warped full-resolution reference."""
        best = self._refine(t_small, _shift_z(r_small, dz), params)
        best[3:] *= per_axis  # in-plane shifts back to full-resolution voxels
        src = _shift_z(ref.astype(np.float32), dz)
        cand = self._warp(src, best[None], nearest=self.is_label)[0].numpy()
        cand = np.rint(cand).astype(ref.dtype) if self.is_label else cand
        return float(self.sim.pairs(self.sim.prepare([t]), self.sim.prepare([cand]), [(0, 0)], device)[0])


def nearest(sim_matrix: np.ndarray) -> tuple:
    """Row-wise nearest column: (index array, similarity array)."""
    idx = np.argmax(sim_matrix, axis=1)
    return idx, sim_matrix[np.arange(sim_matrix.shape[0]), idx]


def memorisation_threshold(null_similarities) -> dict:
    """Threshold from genuinely new volumes' nearest-training similarities. Similarity is bounded by 1, so the fit
    is a normal on log(1 - similarity) (a log dissimilarity); the threshold is where that fit leaves
    FALSE_FLAG_RATE in the near-copy tail, never below the largest observed value. Returns the threshold, the
    stated chance that a new volume is flagged, and the fit."""
    v = np.asarray(null_similarities, float)
    v = v[np.isfinite(v)]
    out = {"threshold": COPY_SIMILARITY, "false_flag_chance": None, "n_null": int(v.size), "fit": None}
    if v.size < 2:
        return out
    from scipy.stats import norm

    u = np.log(np.clip(1.0 - v, 1e-9, None))
    mu, sd = float(u.mean()), float(u.std(ddof=1))
    if sd <= 0:
        return out
    u_thr = min(mu - float(norm.isf(FALSE_FLAG_RATE)) * sd, float(u.min()))
    thr = min(1.0 - math.exp(u_thr), COPY_SIMILARITY)
    u_thr = math.log(1.0 - thr)
    out.update(threshold=float(thr), false_flag_chance=float(norm.cdf((u_thr - mu) / sd)),
               fit={"log_dissimilarity_mean": mu, "log_dissimilarity_std": sd})
    return out


def flag(similarities: np.ndarray, threshold: float) -> np.ndarray:
    s = np.asarray(similarities, float)
    return (s > threshold) | (s >= COPY_SIMILARITY)


def gate_sentence(status: str, flagged: list, n: int, threshold: float | None, chance: float | None = None,
                  invariant_to: str = "flips, zoom and shifts") -> str:
    """The line the report opens with."""
    if status == "not_checked":
        return ("NOT CHECKED: no training set was given (--train), so memorisation of training cases could not be "
                "tested.")
    odds = f"; a genuinely new volume is flagged with probability {chance:.2g}" if chance is not None else ""
    if status == "pass":
        return (f"PASS: no sample is a near-copy of a training case, allowing for {invariant_to} "
                f"(threshold similarity {threshold:.4f}{odds}).")
    names = ", ".join(flagged[:20]) + (" ..." if len(flagged) > 20 else "")
    return (f"FLAGGED: {len(flagged)} of {n} generated samples are near-copies of training cases, allowing for "
            f"{invariant_to} (similarity > {threshold:.4f}{odds}): {names}.")
