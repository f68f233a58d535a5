"""Values people type and read: sizes like 96x96x26, durations like '4 min 10 s', and the numbers in every table (one
mark for a missing value). Standard library only."""

from __future__ import annotations

from CTDiffusionLib.errors import InputError

_SIZE_EXAMPLES = {2: "XxY (e.g. 64x64)", 3: "XxYxZ (e.g. 256x256x26)"}


def parse_size(text: str, flag: str, dims: tuple[int, ...] = (2, 3), why: str = "") -> tuple[int, ...]:
    """'96x96x26' (or '96,96,26') -> (96, 96, 26); InputError naming `flag` unless it has `dims` axes of at least
    one voxel. `why` says where the number of axes comes from (e.g. "this preset's 2d mode")."""
    try:
        size = tuple(int(p) for p in str(text).lower().replace(",", "x").split("x"))
    except ValueError:
        size = ()
    if len(size) not in dims or min(size) < 1:
        shape = " or ".join(_SIZE_EXAMPLES[d] for d in dims)
        raise InputError(f"{flag} {text!r} is not a size of {' or '.join(map(str, dims))} axes"
                         + (f" ({why})." if why else "."), f"Give voxels per axis as {shape}.")
    return size


def format_eta(seconds: float | None) -> str:
    """Time left for people: '1 h 05 min', '4 min 10 s', '12 s'; '' when unknown or negative."""
    if seconds is None:
        return ""
    try:
        s = int(round(float(seconds)))
    except (TypeError, ValueError, OverflowError):
        return ""
    if s < 0:
        return ""
    if s >= 3600:
        return f"{s // 3600} h {(s % 3600) // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


NO_VALUE = "\u2013"  # the one mark every table (report, web viewer, Slicer, scripts) shows for a missing value


def fixed(value, places: int, signed: bool = False) -> str:
    """A table cell with `places` decimals (a leading sign with `signed`); NO_VALUE unless `value` is a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NO_VALUE
    return f"{value:+.{places}f}" if signed else f"{value:.{places}f}"


def format_number(value, digits: int = 3) -> str:
    """A table cell: NO_VALUE for a missing value, floats to `digits` significant digits, anything else as text."""
    if value is None:
        return NO_VALUE
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
