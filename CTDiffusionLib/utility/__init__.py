"""The downstream benchmark: does adding synthetic pairs to a training set help a segmenter on held-out real data?

`ctdiffusion utility` calls `utility_from_args`; scripts call `run_utility`. Heavy packages are imported inside the
functions so `import CTDiffusionLib.utility` stays cheap.

Modules (one idea each):
  volumes     pairs (data/pairs.py) read onto one working grid
  honesty     refuse test files that are training/synthetic files; name synthetic near-copies (evaluation/novelty)
  segmenter   the one fixed MONAI recipe: train (deterministic per seed) and predict
  scoring     Dice and HD95 per structure (MONAI metrics)
  arms        real / synthetic / real+synthetic, trained over K seeds, scored on the held-out real pairs
  statistics  two-way bootstrap intervals, the paired gain and the verdict
  figure      Dice per arm with intervals;  benchmark  the orchestration and utility.json
  adherence   how well a generated CT follows its conditioning label map (per-structure Dice of a segmenter)
  pathology   cardiac masks: the ACDC-group classifier;  mask_benchmark  its arms, conditioning accuracy
  fitting     the training loop both recipes share;  nnunet  --segmenter nnunet: the arms through nnU-Net v2
  table       utility.json as table rows (Slicer, web viewer);  report_section  the section in report.html
"""

from __future__ import annotations

from pathlib import Path

from CTDiffusionLib.runfolder import EVENTS, UTILITY



def run_utility(train, synthetic, test, out, **options) -> dict:
    """See benchmark.run_utility."""
    from CTDiffusionLib.utility.benchmark import run_utility as _run

    return _run(train, synthetic, test, out, **options)


def utility_from_args(args, events) -> int:
    """The `utility` sub-command: start/progress/done events, stop by SIGINT/SIGTERM or OUT/stop-request (like
    training), exit 0 whatever the verdict (it is a finding, not an error)."""
    import sys

    from CTDiffusionLib.errors import InputError
    from CTDiffusionLib.output_folder import claim_output_folder
    from CTDiffusionLib.runfolder import OutputExists
    from CTDiffusionLib.stopping import StopFlag
    from CTDiffusionLib.utility.benchmark import RESULT
    from CTDiffusionLib.utility.mask_benchmark import is_generated_masks, run_mask_utility

    out = Path(args.out)
    segmenter = args.segmenter  # "monai" (default) or "nnunet" (requests.UtilityRequest)
    masks = is_generated_masks(args.synthetic)
    if masks and segmenter != "monai":
        raise InputError(f"--segmenter {segmenter} segments CT + label pairs; --synthetic {args.synthetic} holds "
                         "cardiac masks, whose benchmark is the pathology classifier.", "Leave out --segmenter.")
    if segmenter == "nnunet":  # refused before the output folder is made: nothing is left behind
        from CTDiffusionLib.utility.nnunet import require_installed

        require_installed()
    # only into a new, empty or earlier utility folder, locked; a folder this run created goes again if it fails
    with claim_output_folder(out, "utility", remove_if_failed=True):
        if (out / RESULT).exists():
            raise OutputExists(f"--out {out} already holds a utility benchmark ({RESULT}).",
                               "Choose a new --out folder; CTDiffusion does not replace an earlier result.")
        events.set_log_path(out / EVENTS)
        events.emit("start", command="utility", train=str(args.train), synthetic=str(args.synthetic),
                    test=str(args.test), out=str(out), seeds=args.seeds, ratio=args.ratio)
        options = dict(seeds=args.seeds, ratio=args.ratio, iterations=args.iterations, device=args.device,
                       seed=args.seed, events=events)
        with StopFlag.for_output(out) as stop:  # SIGINT/SIGTERM or OUT/stop-request: stop after this iteration
            if masks:  # cardiac masks: the pathology classifier
                result = run_mask_utility(args.train, args.synthetic, args.test, out, stop=stop, **options)
            else:
                result = run_utility(args.train, args.synthetic, args.test, out, structures=args.structures,
                                     segmenter=segmenter, stop=stop, **options)
    print(f"utility benchmark written to {out / 'utility.json'}\n{result['verdict_line']}", file=sys.stderr)
    events.emit("done", status="completed", utility=str(out / UTILITY), verdict=result["verdict"],
                gain=result["gain"], near_copies=len(result["near_copies"]), time_s=result["time_s"])
    return 0
