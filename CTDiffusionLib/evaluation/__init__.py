"""Quality analysis of generated volumes: realism, diversity, novelty (memorisation) and feature-space distances.

`ctdiffusion evaluate` calls `evaluate_from_args`; scripts and tests call `run_evaluation`. This file stays light:
torch, MONAI, SciPy and matplotlib are imported inside the functions so `import CTDiffusionLib.evaluation` is cheap.

Modules (one idea each):
  inputs       find generated samples (+ sidecars), real/train cases, bring them to the generated grid
               (with CTDiffusionLib.data discovery/preprocess: the model's own preprocessing)
  ct_realism   HU histogram, tissue contrast, noise (radial power spectrum), GLCM texture
  masks        anatomical plausibility checks and structure volumes for cardiac label maps
  similarity   in-plane MS-SSIM (MONAI) for CT, foreground Dice (MONAI) for masks
  floors       real-vs-real floors as distributions (random splits of the real pool) and the verdict rule
  diversity    pairwise similarity within a set (mode collapse)
  novelty      near-copies of training cases, invariant to augmentation and shifts; threshold from real data
  features     small 3D conv autoencoders trained on real data (or user weights) -> feature vectors
  distances    Fréchet distance and MMD between feature sets
  conditions   per-condition breakdown
  figures      PNG figures;  report  the HTML report;  pipeline  the orchestration
"""

from __future__ import annotations

from pathlib import Path


def run_evaluation(real, generated, out, *, train=None, profile=None, run_dir=None, feature_weights=None,
                   device="cpu", seed=0, events=None, feature_steps=None, reference_cache=None,
                   adherence=True) -> dict:
    """Evaluate GENERATED against REAL (held-out) and optionally TRAIN; write OUT/metrics.json, report.html and
    figures. Returns the metrics dict. `feature_steps` shortens the feature networks' training (tests, quick
    looks); `reference_cache` (a dict the caller keeps) reuses the real-side analysis across generated sets;
    `adherence` (paired output) trains the segmenter on TRAIN for the per-structure Dice."""
    from CTDiffusionLib.evaluation.pipeline import run_evaluation as _run

    return _run(real, generated, out, train=train, profile=profile, run_dir=run_dir,
                feature_weights=feature_weights, device=device, seed=seed, events=events,
                feature_steps=feature_steps, reference_cache=reference_cache, adherence=adherence)


def evaluate_from_args(args, events) -> int:
    """The `evaluate` sub-command: resolve the device, run the evaluation, emit start/progress/done events."""
    from CTDiffusionLib.evaluation.inputs import require_folder
    from CTDiffusionLib.evaluation.pipeline import resolve_device
    from CTDiffusionLib.output_folder import claim_output_folder

    require_folder(args.real, "--real")
    require_folder(args.generated, "--generated")
    if getattr(args, "train", None):
        require_folder(args.train, "--train")
    if getattr(args, "run", None):
        require_folder(args.run, "--run")
    device = resolve_device(getattr(args, "device", "auto") or "auto")
    out = Path(args.out)
    # only into a new, empty or earlier evaluate folder, locked; a half-written report in a new folder is removed
    with claim_output_folder(out, "evaluate", remove_if_failed=True):
        return _evaluate_into(args, events, out, device)


def _evaluate_into(args, events, out: Path, device: str) -> int:
    import os
    import sys

    from CTDiffusionLib.runfolder import OutputExists, ReportFolder

    report = ReportFolder(out)
    earlier = report.written()
    if earlier:
        raise OutputExists(f"--out {out} already holds a quality report ({', '.join(earlier)}).",
                           "Choose a new --out folder; CTDiffusion does not replace an earlier report.")
    utility = None
    if getattr(args, "utility", None):  # read first: a wrong path is refused before the long evaluation
        from CTDiffusionLib.utility.report_section import add_to_report, read_utility

        utility = read_utility(args.utility)
    events.set_log_path(report.events)
    events.emit("start", command="evaluate", real=str(args.real), generated=str(args.generated),
                train=args.train, out=str(out), device=device)
    metrics = run_evaluation(args.real, args.generated, out, train=args.train, profile=args.profile,
                             run_dir=getattr(args, "run", None), feature_weights=getattr(args, "feature_weights", None),
                             device=device, seed=args.seed, events=events,
                             # paired output: train the segmenter on --train for the per-structure Dice
                             adherence=not args.no_adherence,
                             # quick looks and tests: fewer feature-network steps (default 200)
                             feature_steps=int(os.environ.get("CTDIFFUSION_EVAL_FEATURE_STEPS") or 0) or None)
    if utility is not None:  # the downstream benchmark as a section of report.html
        add_to_report(metrics, *utility, out)
    gate = metrics["memorisation"]["gate"]
    print(f"evaluation written to {report.report}\n{metrics['verdict_line']}\n{gate}", file=sys.stderr)
    # exit 0 whatever the verdicts: a failing metric is a finding, not an error (scripts read metrics.json)
    events.emit("done", report=str(report.report), metrics=str(report.metrics),
                memorisation=metrics["memorisation"]["status"], flagged=metrics["memorisation"]["flagged"],
                verdict=metrics["verdict"], failing=[k for k, v in metrics["verdicts"].items() if v == "fail"])
    return 0
