"""The rows that show a utility.json (`ctdiffusion utility`): one per arm with its mean, 95% interval and HD95, and
the gain with its verdict. Pure (no numpy, no torch), so the Slicer table and the web viewer show the same rows.

CT pairs are scored by Dice (and HD95 in mm), cardiac masks by pathology accuracy (no HD95); the metric is read
from the result itself.
"""

from __future__ import annotations

from CTDiffusionLib.runfolder import UTILITY, json_document
from CTDiffusionLib.textformat import NO_VALUE, fixed

RESULT = UTILITY  # what `ctdiffusion utility` writes into its --out folder
#: utility.json's arm keys (utility/arms.py, which imports torch) as a table labels them
ARM_LABELS = {"real": "real only", "synthetic": "synthetic only", "real+synthetic": "real + synthetic"}
COLUMNS = (("arm", "Arm"), ("mean", "Mean"), ("interval", "95% interval"), ("hd95", "HD95"))


def load_utility(result) -> dict:
    """utility.json as a dict: the folder `utility` wrote, the file, or the parsed dict."""
    return json_document(result, RESULT)


def metric_of(result: dict) -> str:
    """"dice" (CT pairs) or "accuracy" (cardiac masks: the pathology classifier)."""
    if result.get("metric") in ("dice", "accuracy"):
        return result["metric"]
    return "accuracy" if "accuracy" in (result.get("gain") or {}) else "dice"


def _interval(ci, signed: bool = False) -> str:
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2):
        return NO_VALUE
    return f"{fixed(ci[0], 3, signed)} .. {fixed(ci[1], 3, signed)}"


def utility_rows(result) -> list[dict]:
    """[{"arm", "mean", "interval", "hd95"}, ...] as text, arms in utility.json's order (the benchmark's); the
    metric's name is `metric_title(result)`."""
    result = load_utility(result)
    metric = metric_of(result)
    arms = result.get("arms") or {}
    rows = []
    for arm, entry in arms.items():
        entry = entry or {}
        hd95 = fixed(entry.get("hd95"), 1)
        rows.append({"arm": ARM_LABELS.get(arm, arm), "mean": fixed(entry.get(metric), 3),
                     "interval": _interval(entry.get(f"{metric}_ci95")),
                     "hd95": hd95 if hd95 == NO_VALUE else f"{hd95} {entry.get('hd95_unit', 'mm')}"})
    return rows


def metric_title(result) -> str:
    return "Accuracy" if metric_of(load_utility(result)) == "accuracy" else "Dice"


def column_titles(result) -> list[tuple[str, str]]:
    """[(row key, column title)] for utility_rows: the mean column named by the metric ("Dice mean")."""
    title = metric_title(result)
    return [(key, f"{title} mean" if key == "mean" else name) for key, name in COLUMNS]


def gain_text(result) -> str:
    """'Gain (real + synthetic − real): +0.012 Dice, 95% interval -0.004 .. +0.027 — no measurable gain'."""
    result = load_utility(result)
    metric = metric_of(result)
    gain = result.get("gain") or {}
    return (f"Gain (real + synthetic − real only): {fixed(gain.get(metric), 3, signed=True)} {metric_title(result)}, "
            f"95% interval {_interval(gain.get('ci95'), True)} — {result.get('verdict', 'no verdict')}")


def verdict_text(result) -> str:
    """The benchmark's own sentence (cases, seeds, near-copies) when it wrote one, else the gain line."""
    result = load_utility(result)
    return str(result.get("verdict_line") or gain_text(result))
