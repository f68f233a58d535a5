"""The adversarial-verdict tables docs/quality.md shows, written by the CT and the mask verdict tests alike."""

from __future__ import annotations

from pathlib import Path


def failing_metrics(m: dict) -> set:
    """The metrics metrics.json marks "fail"."""
    return {k for k, v in m["verdicts"].items() if v == "fail"}


def write_verdict_table(path: Path, res: dict, footer: str) -> None:
    """One row per generated set (failing metrics with value and real-vs-real interval, near-copies), then `footer`."""
    keys = list(next(iter(res.values()))["verdicts"])
    lines = ["| generated set | failing metrics (value; real-vs-real interval) | near-copies flagged |", "|---|---|---|"]
    for name, m in res.items():
        fails = [f"`{k}` ({m['summary'][k]['generated']:.4g}; {_interval(m['summary'][k])})" if
                 m["summary"][k]["generated"] is not None else f"`{k}` (cannot be computed)"
                 for k in keys if m["verdicts"][k] == "fail"]
        lines.append(f"| {name} | {', '.join(fails) or 'none'} | {len(m['near_copies'])} of {m['counts']['generated']} |")
    path.write_text("\n".join(lines + ["", footer]) + "\n", encoding="utf-8")


def _interval(entry) -> str:
    iv = entry.get("interval")
    return f"{iv[0]:.4g}..{iv[1]:.4g}" if iv else "none"
