"""The quality table's rows, built once for every place that shows them (report.html, the web viewer's side panel,
the Slicer module's metrics table), so the three cannot drift apart: per metric its verdict first, the metric, the
generated value, the real-vs-real interval as one line of text, and what it measures.

Reads metrics.json defensively (older reports have no verdicts and a "real_floor" instead of an interval; a bare
number is a generated value). Stdlib only.
"""

from __future__ import annotations

from CTDiffusionLib.textformat import NO_VALUE

#: (key, column title) in display order: the verdict first, so it is never scrolled out of view.
COLUMNS = (("verdict", "verdict"), ("metric", "metric"), ("generated", "generated"),
           ("interval", "real-vs-real 95% interval"), ("description", "what it measures"))
VERDICT_LABELS = {"fail": "FAIL", "pass": "ok"}
_SIDES = {"upper": "fail above", "lower": "fail below", "two-sided": "fail outside"}
_BETTER = {"lower": "\u2193", "higher": "\u2191"}  # which way is better, beside an older report's floor


def format_value(value) -> str:
    if value is None:
        return NO_VALUE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(x)}" for k, x in value.items())
    return str(value)


def interval_text(entry: dict) -> str:
    """'lo .. hi (fail above)' from the real-vs-real interval; an older report's floor with the better direction."""
    interval = entry.get("interval")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        side = _SIDES.get(entry.get("sided"))
        return f"{format_value(interval[0])} .. {format_value(interval[1])}" + (f" ({side})" if side else "")
    floor = entry.get("real_floor", entry.get("floor"))
    if floor is None:
        return ""
    arrow = _BETTER.get(str(entry.get("better")))
    return f"{format_value(floor)} {arrow}" if arrow else format_value(floor)


def verdict_of(value) -> str:
    """'pass' | 'fail' | '' from an entry's verdict (a string, or a dict with one)."""
    if isinstance(value, dict):
        value = value.get("verdict")
    if value == "ok":  # what metrics.json writes for a metric inside its interval
        value = "pass"
    return str(value) if value in ("pass", "fail") else ""


def _details(entry: dict) -> str:
    """The numbers behind a verdict that the description alone does not show."""
    extra = ""
    if "generated_value" in entry:
        extra = f" (generated {format_value(entry['generated_value'])}, real {format_value(entry.get('real_value'))})"
    elif "real_value" in entry:
        extra = f" (held-out real {format_value(entry['real_value'])})"
    if entry.get("per_network"):
        extra += f" (per feature network: {', '.join(format_value(v) for v in entry['per_network'])})"
    return extra


def _row(name: str, entry, verdict=None) -> dict:
    entry = entry if isinstance(entry, dict) else {"generated": entry}
    value = verdict_of(entry.get("verdict", verdict))
    return {"verdict": value, "verdict_label": VERDICT_LABELS.get(value, ""), "metric": str(name),
            "generated": format_value(entry.get("generated", entry.get("value"))), "interval": interval_text(entry),
            "description": str(entry.get("description") or "") + _details(entry)}


def quality_rows(metrics: dict, per_condition: bool = True) -> list[dict]:
    """One dict per metric (keys: COLUMNS' keys plus verdict_label), from metrics.json's "summary", then the
    per-condition metrics as "metric [condition]" rows."""
    summary = metrics.get("summary")
    if not isinstance(summary, dict):
        return []
    verdicts = metrics.get("verdicts") if isinstance(metrics.get("verdicts"), dict) else {}
    rows = [_row(name, entry, verdicts.get(name)) for name, entry in summary.items()]
    conditions = metrics.get("per_condition") if per_condition else None
    for condition, entries in (conditions or {}).items():
        if isinstance(entries, dict):
            rows += [_row(f"{name} [{condition}]", entry) for name, entry in entries.items()]
    return rows
