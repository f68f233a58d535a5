"""The utility benchmark in the quality report: `evaluate --utility DIR` adds its arms, gain and verdict to
report.html (and utility.json's content to metrics.json under "utility")."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.runfolder import ReportFolder


def read_utility(path) -> tuple[dict, Path]:
    """(utility.json content, its folder) from the file or the folder holding it; InputError naming the path."""
    from CTDiffusionLib.runfolder import read_json
    from CTDiffusionLib.utility.benchmark import FORMAT, RESULT

    p = Path(path).expanduser()
    p = p / RESULT if p.is_dir() else p
    data = read_json(p, "utility benchmark result", "Give the --out folder of `ctdiffusion utility`.")
    if data.get("format") != FORMAT or "arms" not in data:
        raise InputError(f"{p} is not a result of `ctdiffusion utility` ({FORMAT}).",
                         "Give the --out folder of `ctdiffusion utility`.")
    return data, p.parent


def attach(metrics: dict, utility: dict, utility_dir: Path, report_dir: Path) -> dict:
    """Put the benchmark into the report's metrics, its figure copied beside the report's own figures."""
    utility = dict(utility)
    figure = utility.get("figure")
    if figure and (utility_dir / figure).is_file():
        target = ReportFolder(report_dir).figures / Path(figure).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(utility_dir / figure, target)
        utility["figure"] = f"figures/{target.name}"
    else:
        utility["figure"] = None
    metrics["utility"] = utility
    return metrics


def utility_section(u: dict) -> str:
    """HTML: the verdict line, one row per arm (utility/table.py, the rows Slicer and the web viewer show), the gain,
    near-copies, (masks) conditioning per group, the figure."""
    from CTDiffusionLib.textformat import fixed
    from CTDiffusionLib.utility.table import gain_text, metric_title, utility_rows, verdict_text

    esc = html.escape
    counts = u.get("counts", {})
    rows = "".join(f"<tr><td>{esc(r['arm'])}</td><td>{esc(r['mean'])}</td><td>{esc(r['interval'])}</td>"
                   f"<td>{esc(r['hd95'])}</td></tr>" for r in utility_rows(u))
    cls = "pass" if u.get("verdict") == "helps" else "flagged" if u.get("verdict") == "hurts" else "not_checked"
    parts = ["<h2>Downstream utility (real / synthetic / real+synthetic)</h2>",
             f"<div class='gate {cls}'>Utility — {esc(verdict_text(u))}</div>",
             f"<p>{counts.get('train')} real training, {counts.get('synthetic')} synthetic and {counts.get('test')} "
             f"held-out real cases, {counts.get('seeds')} seeds. {esc(u.get('statistics', ''))}</p>",
             f"<table><tr><th>arm</th><th>mean {esc(metric_title(u))}</th><th>95% interval</th><th>HD95</th></tr>"
             f"{rows}</table>", f"<p>{esc(gain_text(u))}.</p>"]
    copies = u.get("near_copies") or []
    if copies:
        names = ", ".join(f"{c['synthetic']} ~ {c['train']}" for c in copies[:20])
        parts.append(f"<p class='worse'><b>Near-copies of training cases in the synthetic set:</b> {esc(names)}</p>")
    cond = u.get("conditioning")
    if cond:
        rows = "".join(f"<tr><td>{esc(g)}</td><td>{fixed(v.get('accuracy'), 3)}</td>"
                       f"<td>{fixed(v.get('real_accuracy'), 3)}</td><td>{v.get('n_generated')}</td></tr>"
                       for g, v in cond["per_group"].items())
        parts.append(f"<p>Conditioning: generated masks read as the group they were asked for: "
                     f"{fixed(cond.get('accuracy'), 3)} (chance {fixed(cond.get('chance'), 3)}).</p>"
                     "<table><tr><th>requested group</th><th>accuracy on generated</th><th>accuracy on real</th>"
                     f"<th>generated masks</th></tr>{rows}</table>")
    if u.get("figure"):
        parts.append(f"<div><img src='{esc(u['figure'])}' alt='utility'></div>")
    return "\n".join(parts)


def add_to_report(metrics: dict, utility: dict, utility_dir: Path, report_dir) -> None:
    """After the quality report was written: attach the benchmark and write metrics.json and report.html again."""
    from CTDiffusionLib.evaluation.report import write_report
    from CTDiffusionLib.events import _clean
    from CTDiffusionLib.runfolder import write_json

    attach(metrics, utility, utility_dir, report_dir)
    write_json(ReportFolder(report_dir).metrics, _clean(metrics))
    write_report(ReportFolder(report_dir).report, metrics)
