"""Tissue label map of a male pelvis from below the prostate apex to above the femoral heads (65 mm, 26 slices).

Each axial slice is painted in millimetres, back to front: table, body (skin, subcutaneous fat, muscle), the
visceral fat of the pelvis, muscles that line it, bones with cortex and marrow, then the organs. What appears
depends on the height z above the scan's lower edge, measured from the femoral head centre `z_head`:

  z_head - 45 .. - 25  prostate apex/mid; ischial tuberosities, ischiopubic rami, femoral shafts, ischioanal fat
  z_head - 25 .. - 5   prostate base; pubic symphysis, ischium, femoral necks and greater trochanters
  z_head - 5 .. + 20   femoral heads in the acetabula, superior pubic rami, bladder base, seminal vesicles,
                       coccyx, iliopsoas
  above z_head + 20    acetabular roof / ilium, bladder dome, lower sacrum, iliopsoas, rectus abdominis

Coordinates: x = patient left (image right), y = posterior (image down), as in LPS with identity direction.
All sizes and positions are drawn per case; the shapes are ellipses, superellipses and rings evaluated on the
bounding box only, so a 512 x 512 x 26 case paints in about a second.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Tissue labels of the phantom's ground truth (returned with each volume; tests and metrics use them).
TISSUES = {
    "air": 0, "fat": 1, "muscle": 2, "skin": 3, "cortical_bone": 4, "marrow": 5, "bladder": 6, "prostate": 7,
    "seminal_vesicle": 8, "rectal_wall": 9, "rectal_content": 10, "rectal_gas": 11, "vessel": 12,
    "table": 13, "table_core": 14,
}
SCAN_LENGTH_MM = 65.0  # 26 slices of 2.5 mm
# Which bone a cortical_bone/marrow voxel belongs to (Slice.parts, when tracked): the organ labels of phantom pairs.
BONE_PARTS = {"femur": 1, "hip_bone": 2, "sacrum": 3}


class Slice:
    """One axial slice's label map on a grid of voxel-centre coordinates x (columns) and y (rows), in mm."""

    def __init__(self, x: np.ndarray, y: np.ndarray, track_bone_parts: bool = False):
        self.x, self.y = x, y
        self.labels = np.zeros((len(y), len(x)), np.uint8)
        # Every paint also writes `part` here; only read where labels are bone, and only _bone sets `part`.
        self.parts = np.zeros_like(self.labels) if track_bone_parts else None
        self.part = 0

    def _box(self, cx, cy, hx, hy):
        ix = np.searchsorted(self.x, [cx - hx, cx + hx])
        iy = np.searchsorted(self.y, [cy - hy, cy + hy])
        if ix[0] >= ix[1] or iy[0] >= iy[1]:
            return None
        return slice(iy[0], iy[1]), slice(ix[0], ix[1])

    def ellipse(self, label, centre, semi, angle=0.0, only_on=None, half=None, hole=None):
        """Paint an ellipse (semi-axes a, b; rotated by `angle` radians). `half` keeps only y<cy ("ant") or
        y>cy ("post") of it; `hole` (semi-axes) leaves a concentric ellipse out (a ring); `only_on` paints
        over those labels only."""
        a, b = float(semi[0]), float(semi[1])
        if a <= 0 or b <= 0:
            return
        c, s = np.cos(angle), np.sin(angle)
        box = self._box(centre[0], centre[1], np.hypot(a * c, b * s), np.hypot(a * s, b * c))
        if box is None:
            return
        dx = self.x[box[1]][None, :] - centre[0]
        dy = self.y[box[0]][:, None] - centre[1]
        u, v = dx * c + dy * s, -dx * s + dy * c
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        if hole is not None:
            inside &= (u / hole[0]) ** 2 + (v / hole[1]) ** 2 > 1.0
        if half == "ant":
            inside &= dy < 0
        elif half == "post":
            inside &= dy > 0
        self._set(box, inside, label, only_on)

    def superellipse(self, label, centre, a, b_ant, b_post, power, only_on=None, y_max=np.inf):
        """|dx/a|^p + |dy/b|^p <= 1 with a different b in front of and behind the centre (a body outline)."""
        box = self._box(centre[0], centre[1] + (b_post - b_ant) / 2, a, (b_ant + b_post) / 2)
        if box is None:
            return
        dx = self.x[box[1]][None, :] - centre[0]
        y = self.y[box[0]][:, None]
        dy = y - centre[1]
        b = np.where(dy < 0, b_ant, b_post)
        inside = (np.abs(dx) / a) ** power + (np.abs(dy) / b) ** power <= 1.0
        inside &= y <= y_max
        self._set(box, inside, label, only_on)

    def close_cortex(self, marrow, cortex, thickness_mm):
        """Where shapes cut into each other, marrow must not touch soft tissue: give it a cortical rim."""
        bone = (self.labels == marrow) | (self.labels == cortex)
        if not bone.any():
            return
        step = float(self.x[1] - self.x[0]) if len(self.x) > 1 else thickness_mm
        core = ndimage.binary_erosion(bone, iterations=max(1, int(round(thickness_mm / step))), border_value=1)
        self.labels[(self.labels == marrow) & ~core] = cortex

    def _set(self, box, inside, label, only_on):
        region = self.labels[box]
        if only_on is not None:
            inside = inside & np.isin(region, only_on)
        region[inside] = label
        if self.parts is not None:
            self.parts[box][inside] = self.part


def sphere_section(z, z0, radius):
    """Radius of a sphere's cross-section at height z (0 where the slice misses it)."""
    d = 1.0 - ((z - z0) / radius) ** 2
    return radius * np.sqrt(d) if d > 0 else 0.0


def ramp(z, z0, z1):
    """0 below z0, 1 above z1, linear between (how far a structure has 'arrived' at this level)."""
    return float(np.clip((z - z0) / (z1 - z0), 0.0, 1.0))


def draw_case(rng: np.random.Generator) -> dict:
    """Per-case anatomy parameters (mm): body habitus, bone and organ sizes and positions, bladder filling."""
    u = rng.uniform
    habitus = u(0.88, 1.12)  # overall body size
    bones = 1.0 + 0.4 * (habitus - 1.0) + u(-0.04, 0.04)  # the skeleton varies less than the soft tissue
    p = {
        "habitus": habitus, "bones": bones,
        "rotation": np.radians(u(-4, 4)),
        "body_a": 178 * habitus * u(0.94, 1.06), "body_b_ant": 118 * habitus * u(0.9, 1.1),
        "body_b_post": 112 * habitus * u(0.95, 1.05), "body_power": u(2.2, 2.9),
        "fat_lat": 24 * habitus ** 3 * u(0.6, 1.4), "fat_ant": 26 * habitus ** 3 * u(0.6, 1.5),
        "fat_post": 20 * habitus ** 3 * u(0.6, 1.4),
        "cx": u(-15, 15), "table_y": u(118, 132), "table_gap": u(0.0, 3.0),
        "z_head": u(40, 50), "head_r": 23 * bones * u(0.94, 1.06), "head_dx": 92 * bones * u(0.95, 1.05),
        "head_dy": u(-4, 8),
        "symphysis_dy": -58 * bones * u(0.92, 1.08), "sacrum_dy": 88 * bones * u(0.92, 1.08),
        "prostate": (u(18, 26), u(14, 19), u(15, 21)), "prostate_dz": u(-30, -22), "prostate_dx": u(-3, 3),
        "bladder_fill": u(0.15, 1.0), "bladder_dx": u(-10, 10),
        "sv_angle": np.radians(u(15, 35)), "sv_len": u(18, 28),
        "rectum": (u(14, 20), u(11, 16)), "rectum_dx": u(-6, 6), "gas": int(rng.integers(0, 4)),
        "gas_blobs": [(u(-1, 1), u(-1, 1), u(0, 65), u(3, 9)) for _ in range(4)],
        "stool_blobs": [(u(-1, 1), u(-1, 1), u(0, 65), u(2, 5)) for _ in range(6)],
    }
    return p


def paint_slice(sl: Slice, z: float, p: dict) -> None:
    """Paint the slice at height z (mm above the scan's lower edge) of the case `p` into `sl`."""
    T = TISSUES
    zr = z - p["z_head"]  # height relative to the femoral head centres
    cx = p["cx"]
    cy = p["table_y"] - p["table_gap"] - p["body_b_post"]  # the patient lies on the table
    rot = p["rotation"]
    cos_r, sin_r = np.cos(rot), np.sin(rot)

    def at(dx, dy):
        """Anatomy coordinates (relative to the body centre) -> slice mm, with the patient's slight roll."""
        return cx + dx * cos_r - dy * sin_r, cy + dx * sin_r + dy * cos_r

    # CT table: a curved carbon-fibre top (two thin shells around a foam core) under the patient.
    ty = p["table_y"]
    sl.ellipse(T["table"], (0.0, ty + 600.0), (700.0, 600.0), half="ant")
    sl.ellipse(T["table_core"], (0.0, ty + 600.0), (697.0, 597.5), half="ant", only_on=[T["table"]])
    sl.ellipse(T["table"], (0.0, ty + 600.0), (690.0, 588.0), only_on=[T["table_core"]])
    sl.ellipse(T["air"], (0.0, ty + 600.0), (688.0, 586.0))

    # Body: skin, subcutaneous fat, then the muscle envelope; slightly narrower toward the thighs.
    width = 1.0 + 0.0015 * np.clip(zr, -45, 15)
    a, ba, bp, pw = p["body_a"] * width, p["body_b_ant"], p["body_b_post"], p["body_power"]
    body_y_max = ty - p["table_gap"]
    sl.superellipse(T["skin"], (cx, cy), a, ba, bp, pw, y_max=body_y_max)
    sl.superellipse(T["fat"], (cx, cy), a - 2, ba - 2, bp - 2, pw, only_on=[T["skin"]])
    fl, fa, fp = p["fat_lat"], p["fat_ant"], p["fat_post"]
    sl.superellipse(T["muscle"], at(0, 0), a - fl, ba - fa, bp - fp, pw, only_on=[T["fat"]])
    if zr < -25:  # natal cleft: the buttocks part posteriorly in the lowest slices
        depth = 35 * ramp(-zr, 25, 45)
        sl.ellipse(T["fat"], at(0, bp - depth * 0.5), (10, depth), only_on=[T["muscle"]])

    s = p["bones"]
    hx, hy, hr = p["head_dx"], p["head_dy"], p["head_r"]

    # Intermuscular fat planes: around gluteus maximus (posterior) and between the anterior thigh muscles.
    for side in (-1, 1):
        gx, gy = at(side * (hx - 10), hy + 25)
        sl.ellipse(T["fat"], (gx, gy), (hr + 48, hr + 40), angle=side * 0.5, only_on=[T["muscle"]], half="post",
                   hole=(hr + 45, hr + 37))

    # Visceral pelvis: fat around the organs inside the bony ring; wider and deeper above the symphysis.
    up = ramp(zr, -10, 20)
    cav_a = (hx - hr - 14) * (0.85 + 0.15 * up)
    cav_b = 48 + 8 * up
    cav_y = hy + 12
    cav_c = at(0, cav_y)
    sl.ellipse(T["muscle"], cav_c, (cav_a + 2, cav_b * 0.85))  # obturator internus on the side walls
    sl.ellipse(T["fat"], cav_c, (cav_a - 8 - 4 * (1 - up), cav_b))
    if up > 0:  # above the symphysis the visceral space reaches forward to the abdominal wall
        reach = cav_y + ba - fa - 10
        sl.ellipse(T["fat"], cav_c, ((cav_a - 10) * (0.7 + 0.3 * up), cav_b + (reach - cav_b) * up), half="ant")
    if zr < -18:  # ischioanal fossae: fat wedges on both sides of the anal canal
        for side in (-1, 1):
            sl.ellipse(T["fat"], at(side * 32, hy + 45), (22, 30), angle=side * 0.4)
        # levator ani: a thin muscular sling around the rectum and prostate
        sl.ellipse(T["muscle"], at(0, hy + 22), (34, 40))
        sl.ellipse(T["fat"], at(0, hy + 22), (30, 36))

    # Iliopsoas in front of the hip joints, with the femoral/external iliac vessels medial to it.
    if zr > -20:
        grow = ramp(zr, -20, 0)
        for side in (-1, 1):
            ix, iy = at(side * (hx - 8), hy - hr - 14)
            sl.ellipse(T["fat"], (ix, iy), (24 * grow + 3, 19 * grow + 3), angle=side * 0.3)
            sl.ellipse(T["muscle"], (ix, iy), (24 * grow, 19 * grow), angle=side * 0.3)
            vx, vy = at(side * (hx - 40), hy - hr - 12)
            sl.ellipse(T["vessel"], (vx, vy), (5.0, 5.0))
            sl.ellipse(T["vessel"], at(side * (hx - 52), hy - hr - 10), (7.0, 6.0))
            del vx, vy
    if zr > 5:  # rectus abdominis, just inside the anterior fat
        for side in (-1, 1):
            sl.ellipse(T["muscle"], at(side * 24, -ba + fa + 6), (21, 6 + 2 * ramp(zr, 5, 20)), only_on=[T["fat"]])

    _paint_bones(sl, zr, p, at)
    sl.close_cortex(T["marrow"], T["cortical_bone"], 1.5)
    _paint_organs(sl, z, zr, p, at)


def _bone(sl: Slice, centre, semi, angle=0.0, cortex=2.5, part="hip_bone"):
    """Cortical shell around marrow, of the bone `part` (BONE_PARTS)."""
    T = TISSUES
    sl.part = BONE_PARTS[part]
    sl.ellipse(T["cortical_bone"], centre, semi, angle)
    sl.ellipse(T["marrow"], centre, (semi[0] - cortex, semi[1] - cortex), angle)


def _paint_bones(sl: Slice, zr: float, p: dict, at) -> None:
    T = TISSUES
    s = p["bones"]
    hx, hy, hr = p["head_dx"], p["head_dy"], p["head_r"]
    for side in (-1, 1):
        hc = at(side * hx, hy)
        r_head = sphere_section(zr, 0.0, hr)
        # Acetabulum: a cup of bone around the head, open laterally; above the head it becomes the ilium.
        if -hr * 0.8 < zr:
            cup = sphere_section(zr, 0.0, hr + 9) if zr < hr * 0.6 else 0.0
            if cup > 0:
                cup_c = at(side * (hx - 6), hy)
                _bone(sl, cup_c, (cup + 2, cup + 4), cortex=2.0)
                # the cup opens laterally: the femur and the gluteal muscles take that side
                sl.ellipse(T["muscle"], at(side * (hx + cup * 0.9), hy), (cup * 0.75, cup + 6),
                           only_on=[T["cortical_bone"], T["marrow"]])
            if zr > hr * 0.3:  # supra-acetabular ilium, growing to a broad oblique slab
                g = ramp(zr, hr * 0.3, hr * 1.1)
                _bone(sl, at(side * (hx - 4), hy + 6), ((14 + 6 * g) * s, (22 + 18 * g) * s), angle=side * 0.45,
                      cortex=2.0)
        if r_head > 0:
            sl.ellipse(T["muscle"], hc, (r_head + 1.5, r_head + 1.5), only_on=[T["marrow"], T["cortical_bone"]])
            _bone(sl, hc, (r_head, r_head), cortex=1.8, part="femur")  # joint space (muscle HU) around the head
        # Femoral neck and greater trochanter, then the shaft.
        if -40 < zr < -2:
            neck = ramp(-zr, 2, 14)
            tx, ty = at(side * (hx + 30 * s), hy + 6)
            nx, ny = at(side * (hx + 14 * s), hy + 3)
            _bone(sl, (nx, ny), (22 * s * neck + 1e-3, 13 * s), angle=side * 0.15, cortex=2.0, part="femur")
            _bone(sl, (tx, ty), (17 * s, 21 * s), cortex=2.0, part="femur")
        if zr <= -38:
            _bone(sl, at(side * (hx + 22 * s), hy + 4), (15 * s, 15 * s), cortex=5.0, part="femur")
            if zr > -46:  # lesser trochanter, posteromedially
                _bone(sl, at(side * (hx + 8 * s), hy + 14), (9 * s, 7 * s), cortex=2.0, part="femur")
        # Ischium behind the acetabulum, moving medially and back toward the tuberosity at the lowest levels.
        if -45 < zr < 8:
            low = ramp(-zr, 5, 40)
            _bone(sl, at(side * (hx - 18 * s - 12 * low), hy + 30 * s + 12 * low),
                  ((11 + 5 * low) * s, (17 + 3 * low) * s), angle=side * 0.5, cortex=2.2)
        # Pubis: superior ramus from acetabulum to symphysis at hip level, the symphysis below it,
        # the ischiopubic ramus at the lowest levels.
        sy = p["symphysis_dy"]
        if -10 < zr < 12:
            mx, my = at(side * (hx + 8) * 0.5, (hy + sy) / 2 - 4)
            length = np.hypot((hx - 8) / 2, (hy - sy) / 2) + 4
            _bone(sl, (mx, my), (length, 9 * s), angle=side * np.arctan2(hy - sy, hx - 8), cortex=2.0)
        if -32 < zr <= -6:
            _bone(sl, at(side * 13 * s, sy), (11 * s, 9 * s), angle=side * 0.35, cortex=2.0)
            sl.ellipse(T["muscle"], at(side * 1.0, sy), (1.6, 7.0))  # the fibrocartilage disc
        if zr <= -32:
            _bone(sl, at(side * 38 * s, sy + 28), (8 * s, 16 * s), angle=side * -0.6, cortex=2.0)
    # Coccyx, then the lower sacrum above it, posterior in the midline.
    sd = p["sacrum_dy"]
    if -22 < zr <= 8:
        _bone(sl, at(0, sd - 4), (8 * s, 7 * s), cortex=1.8, part="sacrum")
    elif zr > 8:
        g = ramp(zr, 8, 25)
        _bone(sl, at(0, sd), ((16 + 22 * g) * s, (10 + 4 * g) * s), cortex=2.5, part="sacrum")


def _paint_organs(sl: Slice, z: float, zr: float, p: dict, at) -> None:
    T = TISSUES
    hy, sy = p["head_dy"], p["symphysis_dy"]
    soft = [T["fat"], T["muscle"]]
    # Prostate behind the symphysis; apex at the bottom of the scan.
    pa, pb, pc = p["prostate"]
    pz = p["prostate_dz"]
    k = np.sqrt(max(0.0, 1.0 - ((zr - pz) / pc) ** 2))
    prostate_y = sy + 42
    if k > 0:
        sl.ellipse(T["prostate"], at(p["prostate_dx"], prostate_y), (pa * k, pb * k), only_on=soft)
    # Bladder: base just above the prostate, dome size and height set by the filling.
    fill = p["bladder_fill"]
    ba, bb, bc = 18 + 47 * fill, 14 + 38 * fill, 12 + 36 * fill  # nearly empty .. full (~35-700 ml)
    bz = pz + pc * 0.7 + bc  # centre height relative to the heads
    kb = np.sqrt(max(0.0, 1.0 - ((zr - bz) / bc) ** 2))
    bladder_c = at(p["bladder_dx"], sy + 20 + bb * 0.85)
    if kb > 0:
        sl.ellipse(T["muscle"], bladder_c, (ba * kb + 3, bb * kb + 3), only_on=soft)  # detrusor wall
        sl.ellipse(T["bladder"], bladder_c, (ba * kb, bb * kb))
    # Seminal vesicles: a bow tie behind the bladder base, above the prostate.
    if pz + pc * 0.5 < zr < pz + pc * 0.5 + 18:
        svy = bladder_c[1] + bb * kb + 8 if kb > 0 else prostate_y + pb
        for side in (-1, 1):
            sx, sy_ = at(side * p["sv_len"] * 0.6 + p["bladder_dx"] * 0.3, 0)
            sl.ellipse(T["seminal_vesicle"], (sx, svy), (p["sv_len"] * 0.6, 5.5), angle=side * p["sv_angle"],
                       only_on=soft)
    # Rectum behind the prostate, curving back toward the sacrum higher up; wall, stool and gas.
    ra, rb = p["rectum"]
    back = ramp(zr, -10, 25)
    rc = at(p["rectum_dx"], prostate_y + pb + rb + 6 + 18 * back)
    squeeze = 0.55 + 0.45 * ramp(zr, -45, -30)  # the anal canal at the bottom is collapsed
    sl.ellipse(T["rectal_wall"], rc, (ra * squeeze + 3.5, rb * squeeze + 3.5), only_on=soft)
    sl.ellipse(T["rectal_content"], rc, (ra * squeeze, rb * squeeze))
    for i in range(p["gas"]):  # gas rises anteriorly (patient supine)
        gx, gy, gz, gr = p["gas_blobs"][i]
        kg = np.sqrt(max(0.0, 1.0 - ((z - gz) / (gr * 2.5)) ** 2))
        if kg > 0:
            sl.ellipse(T["rectal_gas"], (rc[0] + gx * ra * 0.5, rc[1] - rb * squeeze * 0.4 + gy * 3),
                       (gr * kg * 1.4, gr * kg), only_on=[T["rectal_content"]])
    for gx, gy, gz, gr in p["stool_blobs"]:  # small gas bubbles mixed into the stool
        kg = np.sqrt(max(0.0, 1.0 - ((z - gz) / gr) ** 2))
        if kg > 0:
            sl.ellipse(T["rectal_gas"], (rc[0] + gx * ra * 0.6, rc[1] + gy * rb * 0.6), (gr * kg, gr * kg * 0.8),
                       only_on=[T["rectal_content"]])
