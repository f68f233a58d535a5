"""What the side panel shows: the quality report's verdict line and metrics table, and the training's loss
curve and status from its event stream. Reads defensively: metrics.json keys change between versions, so any
"verdict"/"verdicts" and any "summary" entries found are shown, and unknown shapes are skipped, not fatal.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from CTDiffusionLib.evaluation.quality_table import COLUMNS, quality_rows
from CTDiffusionLib.events import EventReader


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):  # e.g. {"verdict": "pass", "reason": ...}
        for key in ("verdict", "text", "status", "label", "summary"):
            if key in value:
                return _text(value[key])
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items() if not isinstance(v, (dict, list)))
    if isinstance(value, (list, tuple)):
        return "; ".join(_text(v) for v in value)
    return str(value)


def read_metrics(path: Path | None) -> dict:
    """metrics.json as a dict; {} when absent or not (yet) readable (evaluate writes it atomically)."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def verdict_line(metrics: dict) -> str:
    """One line: the report's own verdict line when it has one, else the overall verdict and each named verdict
    ("realism: pass; novelty: ..."); then the memorisation gate's sentence when there is one."""
    parts = []
    if isinstance(metrics.get("verdict_line"), str):
        parts.append(metrics["verdict_line"])
    else:
        if metrics.get("verdict") is not None:
            parts.append(_text(metrics["verdict"]))
        verdicts = metrics.get("verdicts")
        if isinstance(verdicts, dict):
            parts += [f"{name}: {_text(v)}" for name, v in verdicts.items()]
        elif verdicts is not None:
            parts.append(_text(verdicts))
    memorisation = metrics.get("memorisation")
    if isinstance(memorisation, dict) and isinstance(memorisation.get("gate"), str):
        parts.append(memorisation["gate"])
    return "; ".join(p for p in parts if p)


def metric_headers(rows: list[dict]) -> list[dict]:
    """Table headers (the shared quality table's columns, verdict first) for the columns that have something to
    show (older reports have no verdicts); the interval stays on one line. The side panel has no room for the
    descriptions (at 1400x900 they pushed the interval out of view): report.html shows them."""
    return [{"title": title, "key": key, "nowrap": key == "interval"} for key, title in COLUMNS
            if key != "description" and (key == "metric" or any(r.get(key) for r in rows))]


def metric_rows(metrics: dict) -> list[dict]:
    """Rows of the metrics table: evaluation/quality_table.py, the same rows report.html and Slicer show."""
    return quality_rows(metrics)


NO_UTILITY = {"verdict": "", "gain": "", "headers": [], "rows": []}


def utility_panel(metrics: dict, utility_path: Path | None = None) -> dict:
    """The downstream benchmark's table (`ctdiffusion utility`): the one linked into the report (`evaluate
    --utility`, metrics["utility"]) first, else the utility.json at `utility_path`. {"verdict", "gain", "headers",
    "rows"}: the rows of utility/table.py, the same rows report.html and Slicer show; NO_UTILITY when there is none
    or it cannot be read (a damaged file must not stop the viewer)."""
    from CTDiffusionLib.runfolder import read_json_or_empty
    from CTDiffusionLib.utility.table import column_titles, gain_text, utility_rows, verdict_text

    linked = metrics.get("utility")
    result = linked if isinstance(linked, dict) else read_json_or_empty(utility_path)
    if not isinstance(result.get("arms"), dict) or not result["arms"]:
        return dict(NO_UTILITY)
    try:
        return {"verdict": verdict_text(result), "gain": gain_text(result),
                "headers": [{"title": title, "key": key, "nowrap": key == "interval"}
                            for key, title in column_titles(result)],
                "rows": utility_rows(result)}
    except (AttributeError, TypeError, ValueError, KeyError):  # an unknown shape: show nothing rather than fail
        return dict(NO_UTILITY)


class TrainingFollower:
    """Follows RUN_DIR/events.jsonl as it grows (incremental reads, never writes): loss points and status."""

    def __init__(self, events_path: Path | None):
        self.reader = EventReader(events_path) if events_path else None
        self.steps: list[float] = []
        self.losses: list[float] = []
        self.val_steps: list[float] = []
        self.val_losses: list[float] = []
        self.status = ""

    def poll(self) -> bool:
        """Read new events; True when something changed."""
        if self.reader is None:
            return False
        events = self.reader.poll()
        for e in events:
            kind = e.get("event")
            step = e.get("step")
            if kind == "progress" and step is not None:
                if e.get("val_loss") is not None:  # phase "validate"
                    self.val_steps.append(float(step))
                    self.val_losses.append(float(e["val_loss"]))
                if e.get("phase", "train") != "train":  # e.g. sampling previews
                    continue
                if e.get("loss") is not None:
                    self.steps.append(float(step))
                    self.losses.append(float(e["loss"]))
                total, eta = e.get("total"), e.get("eta_s")
                self.status = (f"training: step {step}" + (f" / {total}" if total else "")
                               + (f", about {eta / 60:.0f} min left" if isinstance(eta, (int, float)) else ""))
            elif kind == "done":
                self.status = f"finished ({e.get('status') or 'done'})"
            elif kind == "error":
                self.status = f"failed: {e.get('message', '')}"
        return bool(events)

    def loss_curve_png(self, width_px: int = 360, height_px: int = 220) -> str:
        """The loss curve as a PNG data URL ("" when there is no loss yet)."""
        if not self.losses:
            return ""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width_px / 100, height_px / 100), dpi=100)
        ax = fig.add_subplot()
        ax.plot(self.steps, self.losses, lw=1, label="train")
        if self.val_losses:
            ax.plot(self.val_steps, self.val_losses, "o-", ms=3, lw=1, label="validation")
        ax.set_yscale("log" if min(self.losses + self.val_losses) > 0 else "linear")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def latest_preview_png(samples_dir: Path | None) -> str:
    """The newest complete preview PNG the trainer wrote into samples/, as a data URL ("" when none)."""
    if samples_dir is None or not samples_dir.is_dir():
        return ""
    for png in sorted(samples_dir.glob("*.png"), reverse=True):  # step_00001234_0000.png: newest step last
        try:
            data = png.read_bytes()
        except OSError:
            continue
        if data.endswith(b"IEND\xaeB`\x82"):  # skip a PNG still being written
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return ""
