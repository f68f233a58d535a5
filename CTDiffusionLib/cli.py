"""The `ctdiffusion` command (also `python -m CTDiffusionLib`): phantoms, train, generate, evaluate, utility, demo, view.

Each sub-command is a thin adapter: its flags come from its request (CTDiffusionLib/requests.py); it opens the event
stream and calls one engine function with the parsed request.
Heavy packages are imported inside the handlers so `--help` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from CTDiffusionLib.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, CTDiffusionError, Interrupted
from CTDiffusionLib.stopping import stop_requests
from CTDiffusionLib.events import EventWriter
from CTDiffusionLib.profiles import PROSTATE_CT
from CTDiffusionLib.requests import (REQUESTS, DemoRequest, EvaluateRequest, GenerateRequest, PhantomsRequest,
                                     TrainRequest, UtilityRequest, ViewRequest, request_from)
from CTDiffusionLib.textformat import parse_size


log = logging.getLogger("ctdiffusion")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, built from the requests' field tables (CTDiffusionLib/requests.py)."""
    parser = argparse.ArgumentParser(
        prog="ctdiffusion",
        description="Train 3D diffusion models on prostate CT or cardiac masks, generate synthetic volumes, "
        "and measure how realistic, diverse and novel they are.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for request_type in REQUESTS.values():
        request_type.add_parser(sub)
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
    namespace = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if namespace.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    out = getattr(namespace, "out", None)  # every command but `view` writes into one folder
    events = EventWriter(to_stdout=bool(getattr(namespace, "events", False)))
    new_out = _created_by_us(out) if not getattr(namespace, "resume", False) else None
    empty_out = _empty_folder(out)  # the user's empty folder: emptied again when refused
    try:
        request = request_from(namespace)  # the command's typed request (a rule between its fields may refuse it)
        with stop_requests(out):  # OUT/stop-request stops any job at its next check
            return HANDLERS[request.COMMAND](request, events) or 0
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


def _cmd_phantoms(request: PhantomsRequest, events) -> int:
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    size = parse_size(request.size, "--size") if request.size else None
    out = write_phantom_dataset(request.profile, request.num, request.out, seed=request.seed, size_xyz=size,
                                with_labels=request.with_labels)
    labelled = " with organ labels (nnU-Net raw layout)" if request.with_labels else ""
    print(f"wrote {request.num} {request.profile} phantom cases{labelled} to {out}", file=sys.stderr)
    return 0


def _cmd_train(request: TrainRequest, events) -> int:
    from CTDiffusionLib.training.trainer import train_from_args

    return train_from_args(request, events)


def _cmd_generate(request: GenerateRequest, events) -> int:
    from CTDiffusionLib.generation import generate_from_args

    return generate_from_args(request, events)


def _cmd_evaluate(request: EvaluateRequest, events) -> int:
    from CTDiffusionLib.evaluation import evaluate_from_args

    return evaluate_from_args(request, events)


def _cmd_utility(request: UtilityRequest, events) -> int:
    from CTDiffusionLib.utility import utility_from_args

    return utility_from_args(request, events)


def _cmd_demo(request: DemoRequest, events) -> int:
    """Run the demo's stages as the sub-commands a user would type, in this process."""
    from CTDiffusionLib.demo import demo_stages, demo_summary, paired_demo_stages, paired_demo_summary

    t0 = time.time()
    if request.with_labels and request.profile != PROSTATE_CT.name:
        from CTDiffusionLib.errors import InputError

        raise InputError("demo --with-labels is a prostate-ct demo.", "Drop --profile, or drop --with-labels.")
    stages = (paired_demo_stages(request.out, request.device, request.steps, request.minutes) if request.with_labels
              else demo_stages(request.profile, request.out, request.device, request.steps, request.minutes))
    for name, argv in stages:
        t = time.time()
        print(f"[demo] {name} ...", file=sys.stderr, flush=True)
        code = main(argv)
        if code != 0:
            print(f"[demo] {name} failed with exit code {code}", file=sys.stderr)
            return code
        print(f"[demo] {name} done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    print(paired_demo_summary(request.out, request.device, time.time() - t0) if request.with_labels else
          demo_summary(request.profile, request.out, request.device, time.time() - t0))
    return 0


def _cmd_view(request: ViewRequest, events) -> int:
    from CTDiffusionLib.web.command import run_view

    return run_view(request)


HANDLERS = {
    "phantoms": _cmd_phantoms,
    "train": _cmd_train,
    "generate": _cmd_generate,
    "evaluate": _cmd_evaluate,
    "utility": _cmd_utility,
    "demo": _cmd_demo,
    "view": _cmd_view,
}


if __name__ == "__main__":
    sys.exit(main())
