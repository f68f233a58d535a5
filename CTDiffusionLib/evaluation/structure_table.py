"""The per-structure table's rows (a paired run's output: metrics.json "structures"), built once for every place that
shows them (report.html; the web viewer and Slicer can show the same rows): per structure the HU verdict, the
generated and real HU median [Q1, Q3], the adherence verdict, the segmenter's Dice on the generated CTs and its
real-vs-real Dice, each with its 95% interval. Reads metrics.json defensively (a missing part is a blank cell).
Stdlib only.
"""

from __future__ import annotations

from CTDiffusionLib.evaluation.quality_table import VERDICT_LABELS, verdict_of
from CTDiffusionLib.textformat import NO_VALUE, fixed

#: (key, column title) in display order.
COLUMNS = (("structure", "structure"), ("hu_verdict", "HU"), ("hu_generated", "generated HU median [Q1, Q3]"),
           ("hu_real", "real HU median [Q1, Q3]"), ("dice_verdict", "adherence"),
           ("dice_generated", "Dice, generated CT vs its label map [95%]"),
           ("dice_real", "Dice, real CT vs its labels (real-vs-real) [95%]"))


def hu_cell(summary) -> str:
    """'median [Q1, Q3]' of one HU summary (evaluation/structures.py), a dash when the structure had no voxels."""
    if not isinstance(summary, dict) or summary.get("median") is None:
        return NO_VALUE
    return f"{fixed(summary['median'], 0)} [{fixed(summary['q1'], 0)}, {fixed(summary['q3'], 0)}]"


def _dice(value, interval) -> str:
    if value is None:
        return NO_VALUE
    text = fixed(value, 2)
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        text += f" [{fixed(interval[0], 2)}, {fixed(interval[1], 2)}]"
    return text


def structure_rows(metrics: dict) -> list[dict]:
    """One dict per structure (keys: COLUMNS' keys plus hu_verdict_label and dice_verdict_label); [] for a report
    without a per-structure section (an unpaired run)."""
    section = metrics.get("structures")
    if not isinstance(section, dict):
        return []
    hu = (section.get("hu") or {}).get("per_structure") or {}
    adherence = (section.get("adherence") or {}).get("per_structure") or {}
    names = [s.get("name") for s in section.get("structures") or [] if isinstance(s, dict)] or list(hu)
    rows = []
    for name in names:
        h, a = hu.get(name) or {}, adherence.get(name) or {}
        hu_verdict, dice_verdict = verdict_of(h.get("verdict")), verdict_of(a.get("verdict"))
        rows.append({"structure": str(name), "hu_verdict": hu_verdict,
                     "hu_verdict_label": VERDICT_LABELS.get(hu_verdict, ""),
                     "hu_generated": hu_cell(h.get("generated")), "hu_real": hu_cell(h.get("real")),
                     "dice_verdict": dice_verdict, "dice_verdict_label": VERDICT_LABELS.get(dice_verdict, ""),
                     "dice_generated": _dice(a.get("generated"), a.get("generated_ci95")),
                     "dice_real": _dice(a.get("reference"), a.get("reference_ci95"))})
    return rows


def structure_section_html(metrics: dict) -> str:
    """report.html's per-structure section: the criteria, the table, adherence and label-map near-copy lines."""
    import html

    section = metrics.get("structures")
    if not isinstance(section, dict):
        return ""
    esc = html.escape
    parts = ["<h2>Per structure (CT generated with its label map)</h2>"]
    memo = section.get("label_memorisation") or {}
    if memo.get("gate"):
        parts.append(f"<div class='gate {esc(str(memo.get('status')))}'>{esc(memo['gate'])}</div>")
    elif memo.get("reason"):
        parts.append(f"<p>Near-copies of training label maps: not checked ({esc(memo['reason'])}).</p>")
    if memo.get("near_copies"):
        names = ", ".join(f"{c['sample']} ~ {c['train']} ({c['similarity']:.3f})" for c in memo["near_copies"][:20])
        parts.append(f"<p class='worse'><b>Label maps that are near-copies of training label maps:</b> {esc(names)}</p>")
    hu, adherence = section.get("hu") or {}, section.get("adherence") or {}
    parts.append(f"<p><b>HU:</b> the HU under each structure of every label map, pooled over the cases; "
                 f"{esc(str(hu.get('criterion', '')))}.</p>")
    if adherence.get("status") == "measured":
        seg = adherence.get("segmenter") or {}
        parts.append("<p><b>Adherence:</b> a segmenter of the downstream benchmark's recipe, trained on the real "
                     f"training pairs ({esc(str(seg.get('trained_on', '')))}, {seg.get('iterations')} iterations), "
                     "segments each generated CT; its Dice against the label map the CT was made for, next to its "
                     f"Dice on the held-out real pairs; {esc(str(adherence.get('criterion', '')))}.</p>")
    else:
        parts.append(f"<p><b>Adherence:</b> not measured ({esc(str(adherence.get('reason', '')))}).</p>")
    head = "".join(f"<th>{esc(title)}</th>" for _key, title in COLUMNS)
    body = []
    for row in structure_rows(metrics):
        cells = []
        for key, _title in COLUMNS:
            if key.endswith("_verdict"):
                cls = {"fail": "worse", "pass": "ok"}.get(row[key], "")
                cells.append(f"<b class='{cls}'>{esc(row[key + '_label'])}</b>")
            else:
                cells.append(esc(row[key]))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")
    return "\n".join(parts)
