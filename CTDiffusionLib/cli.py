"""The `ctdiffusion` command (also `python -m CTDiffusionLib`): phantoms, train, generate, evaluate, demo.

Each sub-command is a thin adapter: it parses flags, opens the event stream and calls one engine function.
Heavy packages are imported inside the handlers so `--help` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from CTDiffusionLib.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, CTDiffusionError, Interrupted
from CTDiffusionLib.stopping import stop_requests
from CTDiffusionLib.events import EventWriter
from CTDiffusionLib.profiles import PROFILES, PROSTATE_CT
from CTDiffusionLib.samplers import DEFAULT_SAMPLER, OBJECTIVES, SAMPLERS, sampler_names
from CTDiffusionLib.textformat import parse_size


log = logging.getLogger("ctdiffusion")


def _int_at_least(minimum: int):
    """argparse type for whole numbers >= minimum, with a readable message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _minutes(text: str) -> float:
    """argparse type for a time budget: a finite number of minutes > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of minutes above 0, got {text}")
    return value


MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
    """argparse type for a random seed: a whole number from 0 to 2^32 - 1 (what every generator accepts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SEED}, got {value}")
    return value


def _finite_at_least(minimum: float, exclusive: bool = False):
    """argparse type for a finite number >= minimum (> minimum with `exclusive`): NaN and inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"expected a finite number {'>' if exclusive else '>='} {minimum:g}, "
                                             f"got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctdiffusion",
        description="Train 3D diffusion models on prostate CT or cardiac masks, generate synthetic volumes, "
        "and measure how realistic, diverse and novel they are.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    profiles = list(PROFILES)  # read now, so a profile registered at run time is offered too

    p = sub.add_parser("phantoms", help="write a synthetic data set in the on-disk layout real data uses")
    p.add_argument("--profile", choices=profiles, required=True)
    p.add_argument("--num", type=_positive_int, required=True, help="number of cases (CT volumes / ACDC patients)")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--size", default=None,
                   help="image size XxYxZ in voxels (default: 512x512x26 for CT, 216x256x10 for masks)")
    p.add_argument("--with-labels", action="store_true",
                   help="CT phantoms with their organ label maps, in the nnU-Net raw layout (imagesTr/, labelsTr/, "
                        "dataset.json)")

    p = sub.add_parser("train", help="train a diffusion model; writes a run folder with checkpoints and a model bundle")
    p.add_argument("--profile", choices=profiles, required=True)
    p.add_argument("--data", nargs="+", default=None,
                   help="a folder (volumes, DICOM series or ACDC layout), several files, or a .txt list of files "
                        "(required for a new run; a resumed run reuses its own)")
    p.add_argument("--out", required=True, help="run folder (new, or an existing run with --resume)")
    p.add_argument("--preset", default=None, help="network/grid preset (see docs/presets.md); default depends on profile")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_int, default=None)
    length.add_argument("--steps", type=_positive_int, default=None)
    length.add_argument("--minutes", type=_minutes, default=None,
                        help="train for about this many minutes: the step count is fixed from the measured speed "
                             "after the first minute (docs/engine.md)")
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--lr", type=_finite_at_least(0, exclusive=True), default=None, help="peak learning rate (AdamW)")
    p.add_argument("--warmup-steps", type=_non_negative_int, default=None)
    p.add_argument("--schedule", choices=("linear", "cosine"), default=None, help="beta schedule")
    p.add_argument("--prediction", choices=("epsilon", "v"), default=None, help="what the network predicts")
    p.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="ddpm (DDPM schedule, epsilon/v targets) or flow (rectified flow); default: the preset's (ddpm)")
    p.add_argument("--min-snr-gamma", type=_finite_at_least(0), default=None,
                   help="weight the loss by Min-SNR-gamma (e.g. 5; 0: plain MSE; default: the preset's)")
    p.add_argument("--grid", default=None, help="training grid XxYxZ (or XxY for 2D masks); overrides the preset")
    p.add_argument("--val-fraction", type=float, default=None, help="share of cases held out for validation (0.2)")
    p.add_argument("--augment", default=None,
                   help="comma list of zoom,flip,rotate or 'none' (default: the profile's augmentation)")
    p.add_argument("--conditions", default=None,
                   help="condition on these keys (e.g. group,phase from ACDC Info.cfg) or a CSV file with a 'file' "
                        "column and one column per condition")
    p.add_argument("--cond-drop", type=float, default=None,
                   help="probability of dropping the conditions during training (classifier-free guidance, 0.15)")
    p.add_argument("--with-labels", action="store_true",
                   help="learn CT + label-map pairs (nnU-Net/Decathlon, TotalSegmentator or NAME.seg.nrrd): a CT "
                        "model conditioned on the label map and a label-map model, in one run (docs/engine.md)")
    p.add_argument("--structures", default=None,
                   help="with --with-labels: the structures to learn, e.g. prostate,bladder,femur=femur_l+femur_r "
                        "(default: every structure in the data)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, help="steps between checkpoints")
    p.add_argument("--sample-every", type=_non_negative_int, default=None, help="steps between preview samples (0: off)")
    p.add_argument("--seed", type=_seed, default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="with --resume: continue although cases of the data were removed, added or replaced since "
                        "the run started (refused otherwise; the split is drawn again)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=("auto", "on", "off"), default=None, help="bf16 autocast (auto: on for CUDA)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network (CUDA)")
    p.add_argument("--grad-checkpoint", action="store_true", default=None, help="trade compute for memory")
    p.add_argument("--events", action="store_true", help="print JSON-lines events on stdout")

    p = sub.add_parser("generate", help="sample new volumes from a trained model")
    p.add_argument("--model", required=True, help="a run folder or a model bundle folder")
    p.add_argument("--num", type=_positive_int, default=None,
                   help="how many volumes (on a paired run: new CT + label pairs)")
    p.add_argument("--out", required=True)
    p.add_argument("--from-labels", default=None,
                   help="a paired run: one CT for each label map in this file or folder, on its grid")
    p.add_argument("--sampler", choices=sampler_names(), default=None,
                   help="default: the model's objective's own (" + ", ".join(
                       f"{objective}: {name}" for objective, name in DEFAULT_SAMPLER.items()) + ")")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampling steps (default per sampler: " + ", ".join(
                       f"{name} {spec.steps}" for name, spec in SAMPLERS.items()) + ")")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--reference", default=None, help="copy spacing/origin/direction from this volume")
    p.add_argument("--condition", default=None, help="e.g. group=DCM,phase=ED (models trained with conditions)")
    p.add_argument("--guidance-scale", type=_finite_at_least(0), default=None,
                   help="classifier-free guidance weight (default 3 for --condition, 1 for a paired run's CT)")
    p.add_argument("--device", default="auto")
    p.add_argument("--events", action="store_true")

    p = sub.add_parser("evaluate", help="quality report: realism, diversity, novelty of generated vs real volumes")
    p.add_argument("--real", required=True, help="real (held-out) data: folder, ACDC layout or run folder")
    p.add_argument("--generated", required=True, help="folder written by `generate`")
    p.add_argument("--train", default=None, help="training data, for the memorisation check")
    p.add_argument("--out", required=True, help="report folder (metrics.json, report.html, figures)")
    p.add_argument("--profile", choices=profiles, default=None, help="default: read from the generated sidecars")
    p.add_argument("--run", default=None, help="run folder, to include loss curves")
    p.add_argument("--feature-weights", default=None,
                   help="safetensors weights of a feature network to use instead of the self-trained one")
    p.add_argument("--utility", default=None,
                   help="the --out folder (or utility.json) of `ctdiffusion utility`: shown as a section of the report")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--events", action="store_true")

    p = sub.add_parser("utility", help="downstream benchmark: does adding synthetic pairs help a segmenter on "
                                       "held-out real pairs? (real / synthetic / real+synthetic arms)")
    p.add_argument("--train", required=True, help="real training pairs (nnU-Net raw layout or any pairs layout); "
                                                  "for cardiac masks an ACDC folder")
    p.add_argument("--synthetic", required=True, help="synthetic pairs (e.g. written by `generate` on a paired run), "
                                                      "or masks from a group-conditioned cardiac model")
    p.add_argument("--test", required=True, help="held-out REAL data (pairs or ACDC), in neither --train nor "
                                                 "--synthetic")
    p.add_argument("--out", required=True, help="folder for utility.json, the figure and events.jsonl")
    p.add_argument("--seeds", type=_positive_int, default=3, help="training seeds per arm (3)")
    p.add_argument("--ratio", type=_finite_at_least(0.0, exclusive=True), default=1.0,
                   help="synthetic cases per real case in the mixed arm (1)")
    p.add_argument("--structures", default=None, help="e.g. prostate,bladder,femur=femur_left+femur_right "
                                                      "(default: every structure of --train)")
    p.add_argument("--iterations", type=_positive_int, default=None,
                   help="segmenter (classifier) training iterations per arm and seed (default: scaled to the real "
                        "count)")
    p.add_argument("--seed", type=_seed, default=0, help="first seed (seeds are SEED .. SEED+K-1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--events", action="store_true", help="print JSON-lines events on stdout")

    p = sub.add_parser("demo", help="phantoms -> train (tiny, CPU) -> generate -> evaluate, in a few minutes")
    p.add_argument("--out", default="demo_output")
    p.add_argument("--profile", choices=profiles, default=PROSTATE_CT.name)
    p.add_argument("--device", default="cpu")
    demo_length = p.add_mutually_exclusive_group()
    demo_length.add_argument("--steps", type=_positive_int, default=None,
                             help="training steps (default: the demo's own: 11 minutes of training for CT, 300 steps "
                                  "for masks)")
    demo_length.add_argument("--minutes", type=_minutes, default=None, help="train for this many minutes instead")
    p.add_argument("--with-labels", action="store_true",
                   help="the paired demo: CT + organ-label phantoms, CT for held-out label maps and new pairs "
                        "(8 minutes of training: half per model)")

    from CTDiffusionLib.web.command import add_view_parser  # light: the web extra is imported only when serving

    add_view_parser(sub)
    return parser


def _created_by_us(path: str | None) -> Path | None:
    """The output folder if this command is about to create it (so a failure can remove it again)."""
    if not path:
        return None
    p = Path(path).expanduser()
    if p.exists():
        return None
    while not p.parent.exists() and p.parent != p:  # the topmost folder this command would create
        p = p.parent
    return p


def _forget_removed_log(events) -> None:
    """A refused command's output folder was removed again (output_folder.py): its error goes to stdout only."""
    if events.log_path is not None and not events.log_path.parent.is_dir():
        events.set_log_path(None)


def _empty_folder(path: str | None) -> Path | None:
    """The output folder if it exists and is empty (a refusal must leave it so)."""
    p = Path(path).expanduser() if path else None
    try:
        return p if p is not None and p.is_dir() and not any(p.iterdir()) else None
    except OSError:
        return None


def _report(text: str) -> None:
    """Write a final message to stderr in one write: under torchrun every rank reports into the same pipe, and
    print()'s separate write of the newline let another rank's message land in the middle of the line."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    events = EventWriter(to_stdout=bool(getattr(args, "events", False)))
    new_out = _created_by_us(getattr(args, "out", None)) if args.command != "train" or not args.resume else None
    empty_out = _empty_folder(getattr(args, "out", None))  # the user's empty folder: emptied again when refused
    try:
        with stop_requests(getattr(args, "out", None)):  # OUT/stop-request stops any job at its next check
            return HANDLERS[args.command](args, events) or 0
    except Interrupted as exc:  # a requested stop, not a failure: the run is resumable
        events.emit("done", status="stopped", message=exc.message, hint=exc.hint, exit_code=exc.exit_code)
        _report(f"stopped: {exc.message}\n{exc.hint}")
        return exc.exit_code
    except CTDiffusionError as exc:
        _forget_removed_log(events)
        events.emit("error", message=exc.message, hint=exc.hint, exit_code=exc.exit_code)
        _report(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""))
        # never remove a folder another run writes to; under torchrun only rank 0 cleans up (it owns the folder,
        # and another rank removing it would pull the event log from under rank 0's own error report)
        if exc.exit_code == EXIT_BAD_INPUT and new_out is not None and new_out.exists() \
                and not getattr(exc, "output_in_use", False) and os.environ.get("RANK", "0") == "0":
            shutil.rmtree(new_out, ignore_errors=True)  # nothing half-written left behind
        if exc.exit_code == EXIT_BAD_INPUT and empty_out is not None and not getattr(exc, "output_in_use", False) \
                and os.environ.get("RANK", "0") == "0":
            for item in empty_out.iterdir():  # it was empty when the command started: all of it is the command's
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
        return exc.exit_code
    except KeyboardInterrupt:
        events.emit("done", status="stopped", message="Interrupted.", hint="", exit_code=EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except (OSError, MemoryError) as exc:  # the machine, not a bug: full disk, read-only folder, out of memory
        message, hint = _machine_error_text(exc)
        _forget_removed_log(events)
        events.emit("error", message=message, hint=hint, exit_code=EXIT_FAILED)
        _report(f"error: {message}\nhint: {hint}")
        return EXIT_FAILED
    except Exception as exc:  # a bug: keep the traceback for the log, one sentence for the event stream
        traceback.print_exc(file=sys.stderr)
        events.emit("error", message=f"Internal error: {type(exc).__name__}: {exc}",
                    hint="This is a bug in CTDiffusion; the traceback is in the log.", exit_code=EXIT_FAILED)
        return EXIT_FAILED


def _machine_error_text(exc: BaseException) -> tuple[str, str]:
    """One sentence and a hint for an error of the machine that reached the CLI unconverted."""
    if isinstance(exc, MemoryError):
        return ("The computer ran out of memory.", "Use smaller volumes, a smaller --batch-size or --grid, or a "
                "machine with more memory; what was written before stays valid.")
    where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    return (f"Could not read or write{where} ({exc.strerror or exc}).",
            "Check free disk space and write permission of the output folder, then run again; what was written "
            "before stays valid.")


def _cmd_phantoms(args, events) -> int:
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    size = parse_size(args.size, "--size") if args.size else None
    out = write_phantom_dataset(args.profile, args.num, args.out, seed=args.seed, size_xyz=size,
                                with_labels=args.with_labels)
    labelled = " with organ labels (nnU-Net raw layout)" if args.with_labels else ""
    print(f"wrote {args.num} {args.profile} phantom cases{labelled} to {out}", file=sys.stderr)
    return 0


def _cmd_train(args, events) -> int:
    from CTDiffusionLib.training.trainer import train_from_args

    return train_from_args(args, events)


def _cmd_generate(args, events) -> int:
    from CTDiffusionLib.generation import generate_from_args

    return generate_from_args(args, events)


def _cmd_evaluate(args, events) -> int:
    from CTDiffusionLib.evaluation import evaluate_from_args

    return evaluate_from_args(args, events)


def _cmd_utility(args, events) -> int:
    from CTDiffusionLib.utility import utility_from_args

    return utility_from_args(args, events)


def _cmd_demo(args, events) -> int:
    """Run the demo's stages as the sub-commands a user would type, in this process."""
    from CTDiffusionLib.demo import demo_stages, demo_summary, paired_demo_stages, paired_demo_summary

    t0 = time.time()
    paired = getattr(args, "with_labels", False)
    if paired and args.profile != PROSTATE_CT.name:
        from CTDiffusionLib.errors import InputError

        raise InputError("demo --with-labels is a prostate-ct demo.", "Drop --profile, or drop --with-labels.")
    stages = (paired_demo_stages(args.out, args.device, args.steps, args.minutes) if paired else
              demo_stages(args.profile, args.out, args.device, args.steps, args.minutes))
    for name, argv in stages:
        t = time.time()
        print(f"[demo] {name} ...", file=sys.stderr, flush=True)
        code = main(argv)
        if code != 0:
            print(f"[demo] {name} failed with exit code {code}", file=sys.stderr)
            return code
        print(f"[demo] {name} done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    print(paired_demo_summary(args.out, args.device, time.time() - t0) if paired else
          demo_summary(args.profile, args.out, args.device, time.time() - t0))
    return 0


def _cmd_view(args) -> int:
    from CTDiffusionLib.web.command import run_view

    return run_view(args)


HANDLERS = {
    "phantoms": _cmd_phantoms,
    "train": _cmd_train,
    "generate": _cmd_generate,
    "evaluate": _cmd_evaluate,
    "utility": _cmd_utility,
    "demo": _cmd_demo,
    "view": lambda args, events: _cmd_view(args),
}


if __name__ == "__main__":
    sys.exit(main())
