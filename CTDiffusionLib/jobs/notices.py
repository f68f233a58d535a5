"""What the panel tells the user about a training before and while it runs (issue 29 item 4), decided here and
only shown by the GUI: the coarse-data notice from the chosen cases' sizes against the preset's grid (before the
child starts), and the text of the child's "warning" events and of its start event's "warnings".

Stdlib + presets + training/cost (no torch): the panel loads before torch is installed.
"""

from __future__ import annotations

from CTDiffusionLib.presets import PRESETS
from CTDiffusionLib.training.cost import coarse_data_notice


def preset_grid(profile: str, preset: str | None) -> list[int] | None:
    """The training grid of `preset` (XxYxZ, or XxY for 2D masks), None when the profile has no such preset."""
    entry = PRESETS.get(profile, {}).get(preset or "")
    return list(entry["grid"]) if entry and entry.get("grid") else None


def coarse_data_text(sizes, profile: str, preset: str | None) -> str | None:
    """One paragraph (what and what to do) when the cases' in-plane size is far below the preset's grid, else
    None. `sizes`: each case's voxel size (x, y[, z]), e.g. the data summary's."""
    grid = preset_grid(profile, preset)
    sizes_xy = [(int(s[0]), int(s[1])) for s in sizes or [] if len(s) >= 2]
    notice = coarse_data_notice(sizes_xy, grid) if grid else None
    return f"{notice[0]} {notice[1]}" if notice else None


def warning_texts(event: dict | None) -> list[str]:
    """What to show the user for one event of the child: a "warning" event's message and hint, or each of a
    "start" event's "warnings"; [] for any other event."""
    if not event:
        return []
    if event.get("event") == "warning":
        text = " ".join(str(part) for part in (event.get("message"), event.get("hint")) if part)
        return [text] if text else []
    if event.get("event") == "start":
        return [str(w) for w in event.get("warnings") or [] if w]
    return []
