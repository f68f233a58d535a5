"""report.html: plain, self-contained HTML (no scripts, no external CSS; PNGs beside it in figures/). The
memorisation gate is the first thing on the page."""

from __future__ import annotations

import html
from pathlib import Path

from CTDiffusionLib.evaluation.quality_table import COLUMNS, format_value, quality_rows
from CTDiffusionLib.textformat import NO_VALUE

CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.gate{padding:12px 16px;font-weight:bold;font-size:16px;border-radius:4px}
.pass{background:#e3f4e3;border:2px solid #2e7d32}.flagged{background:#fde2e2;border:2px solid #c62828}
.not_checked{background:#fff4d6;border:2px solid #b08000}.worse{color:#c62828}img{max-width:100%;margin:6px 0}
.small{font-size:12px;color:#555}.ok{color:#2e7d32}.nowrap{white-space:nowrap}"""


_fmt = format_value


def _table(header: list, rows: list) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summary_table(summary: dict) -> str:
    """The metrics table (rows: evaluation/quality_table.py, shared with the web viewer and Slicer): the verdict
    first and coloured, the real-vs-real interval on one line."""
    rows = []
    for row in quality_rows({"summary": summary}, per_condition=False):
        cls = {"fail": "worse", "pass": "ok"}.get(row["verdict"], "")
        rows.append([f"<b class='{cls}'>{html.escape(row['verdict_label'])}</b>", html.escape(row["metric"]),
                     html.escape(row["generated"]),
                     f"<span class='nowrap'>{html.escape(row['interval'] or NO_VALUE)}</span>",
                     html.escape(row["description"])])
    return _table([title for _key, title in COLUMNS], rows)


def write_report(path: Path, m: dict) -> None:
    memo = m["memorisation"]
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>CTDiffusion quality report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Quality report: {esc(m['profile'])}</h1>",
             f"<div class='gate {esc(memo['status'])}'>Memorisation gate — {esc(memo['gate'])}</div>",
             f"<div class='gate {'flagged' if m['verdict'] == 'fail' else 'pass'}'>Verdict — "
             f"{esc(m['verdict_line'])}</div>",
             f"<p>{m['counts']['generated']} generated, {m['counts']['real']} real (held-out)"
             + (f", {m['counts']['train']} training" if m['counts']['train'] else "")
             + f" samples on the generated grid {'x'.join(map(str, m['grid_xyz']))} (x, y, z), mode {esc(m['mode'])}.</p>",
             "<p><b>How to read:</b> every metric is judged against what genuine real data gives for the same "
             f"comparison: the real-vs-real interval is the {esc(m['floor'])}. A metric fails (red) only when the "
             "generated value lies outside that interval (above it for distances; on either side for two-sided "
             "metrics such as diversity, where too similar is mode collapse and too dissimilar is noise).</p>",
             f"<p><b>Feature network</b> (Fréchet distance, MMD): {esc(m['feature_network'])}.</p>",
             f"<p><b>Similarity</b> (diversity and novelty): {esc(m['similarity'])}.</p>"]
    for warning in m.get("warnings", []):
        parts.append(f"<p class='worse'><b>Warning:</b> {esc(warning)}</p>")
    for note in m.get("notes", []):
        parts.append(f"<p class='small'>Note: {esc(note)}</p>")
    parts += ["<h2>Summary</h2>", summary_table(m["summary"])]

    parts.append("<h2>Novelty / memorisation</h2>")
    if memo["status"] == "not_checked":
        parts.append("<p>Not checked: pass <code>--train DIR</code> with the training data.</p>")
    else:
        chance = memo.get("false_flag_chance")
        parts.append(f"<p>Each sample is compared with every training case after aligning the case to it "
                     f"({esc(memo['invariant_to'])}). Threshold: aligned similarity above {memo['threshold']:.4f}, "
                     f"set from {memo['n_null']} genuinely new real volumes (held-out cases, and training cases "
                     "left out) so that a new volume is flagged with probability "
                     f"{_fmt(chance)}. Flagged: {esc(', '.join(memo['flagged']) or 'none')}.</p>")
    rows = []
    for r in m["per_sample"]:
        flag = "<b class='worse'>MEMORISED</b>" if r.get("memorised") else ""
        if r.get("found") is False:
            flag += " <b class='worse'>NOTHING FOUND</b>"
        extra = _fmt(r.get("plausible")) if "plausible" in r else _fmt(r.get("noise_hf_share"))
        last = "plausible" if "plausible" in r else "noise share"
        rows.append([esc(r["name"]), esc(_fmt(r.get("condition"))), esc(_fmt(r.get("nearest_train"))),
                     _fmt(r.get("nearest_similarity")), flag, extra])
    parts.append(_table(["sample", "condition", "nearest training case", "aligned similarity", "near-copy",
                         last if m["per_sample"] else ""], rows))

    if m.get("per_condition"):
        parts.append("<h2>Per condition</h2>")
        keys = sorted({k for row in m["per_condition"].values() for k in row if k not in ("condition",)})
        rows = [[esc(c)] + [esc(_fmt(row.get(k))) for k in keys] for c, row in m["per_condition"].items()]
        parts.append(_table(["condition"] + keys, rows))

    if m.get("structures"):  # a paired run's output: HU, adherence, label-map near-copies per structure
        from CTDiffusionLib.evaluation.structure_table import structure_section_html

        parts.append(structure_section_html(m))
    if m.get("utility"):  # `evaluate --utility DIR`: the downstream benchmark (CTDiffusionLib/utility)
        from CTDiffusionLib.utility.report_section import utility_section

        parts.append(utility_section(m["utility"]))
    parts.append("<h2>Figures</h2>")
    for fig in m.get("figures", []):
        parts.append(f"<div><img src='{esc(fig)}' alt='{esc(Path(fig).stem)}'></div>")
    parts.append("<p class='small'>Full numbers: metrics.json beside this file.</p></body></html>")
    from CTDiffusionLib.runfolder import atomic_write

    atomic_write(path, "\n".join(parts))
