"""One typed request per command: the only place a setting's name, type, default, check and help are written.

Each request is a dataclass whose fields carry an `Option` (the flag's help, its parser and checks, its choices).
From that one table come:
- the `ctdiffusion` argument parser and its help (`add_parser`), so argparse checks every value once, in the
  process that runs the command;
- the argument list for a child process (`request.argv()`), which the Slicer module sends (jobs/commands.py);
- the request back from parsed arguments (`from_namespace`), which is what the engine functions take.

The Slicer panel fills a request; benchmarks and tests build one directly (`TrainRequest(profile=..., data=...)`)
instead of assembling flag strings. A request holds canonical values (what the parser would give back: text for
sizes, lists and conditions); GUI-friendly values such as `grid=(48, 48, 12)` or `augment=("zoom",)` are turned into
that text on construction, so `from_namespace(parse(request.argv())) == request` for every field.

Standard library only: the Slicer module imports it at start-up, before torch is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.profiles import PROFILES, PROSTATE_CT
from CTDiffusionLib.samplers import DEFAULT_SAMPLER, OBJECTIVES, SAMPLERS, sampler_names

MAX_SEED = 2**32 - 1


# ----------------------------------------------------------------------------------------------- value parsers
def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A whole number in [minimum, maximum], with a readable message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, got {value}")
        return value

    return parse


def finite_number(minimum: float, *, above: bool = False, below: float | None = None,
                  what: str = "a number") -> Callable[[str], float]:
    """A finite number >= minimum (> minimum with `above`), and < `below` when given: NaN and inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        low_ok = value > minimum if above else value >= minimum
        if not (math.isfinite(value) and low_ok and (below is None or value < below)):
            bounds = f"{'>' if above else '>='} {minimum:g}" + ("" if below is None else f" and < {below:g}")
            finite = "a finite number" if what == "a number" else what
            raise argparse.ArgumentTypeError(f"expected {finite} {bounds}, got {text}")
        return value

    return parse


positive = whole_number(1)
non_negative = whole_number(0)
seed_value = whole_number(0, MAX_SEED)  # what every random generator accepts
minutes_value = finite_number(0, above=True, what="a number of minutes")
fraction = finite_number(0, below=1)  # a share in [0, 1)


def size_text(value: Sequence[int] | str | None) -> str | None:
    """(48, 48, 12) -> "48x48x12"; text and None as they are."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    return "x".join(str(int(v)) for v in value)


def names_text(value: Sequence[str] | str | None, empty: str | None = None) -> str | None:
    """("zoom", "flip") -> "zoom,flip"; an empty sequence -> `empty`; text and None as they are."""
    if value is None or isinstance(value, str):
        return value or None
    return ",".join(value) if value else empty


def augment_text(value: Sequence[str] | str | None) -> str | None:
    """Augmentations chosen in a panel: () means none at all ("none"), None the profile's own."""
    return names_text(value, empty="none")


def condition_text(value: Mapping[str, str] | str | None) -> str | None:
    """{"group": "DCM", "phase": "ED"} -> "group=DCM,phase=ED" (empty values left out)."""
    if value is None or isinstance(value, str):
        return value or None
    text = ",".join(f"{k}={v}" for k, v in value.items() if v not in (None, ""))
    return text or None


def paths_list(value: Sequence[str] | str | None) -> list[str] | None:
    """One path or several, as the list `--data A B` gives."""
    if value is None:
        return None
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


# ----------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Option:
    """How one request field appears on the command line."""

    help: str = ""
    parse: Callable[[str], Any] | None = None  # argparse `type`: converts and checks the text
    choices: Callable[[], Sequence[str]] | Sequence[str] | None = None  # a callable is read when the parser is built
    switch: bool = False  # a flag without a value (store_true)
    many: bool = False  # nargs="+"
    positional: bool = False
    group: str | None = None  # fields of one group exclude each other
    needs: str | None = None  # a switch without which this field means nothing (refused alone)
    canonical: Callable[[Any], Any] | None = None  # GUI value -> the value the parser gives back

    def flag(self, name: str) -> str:
        return name if self.positional else _long_flag(name)

    def choice_list(self) -> list[str] | None:
        """The allowed values (a callable is read now), or None for any."""
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)


def _long_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def option(default: Any = None, help: str = "", **spec) -> Any:
    """A request field with a default."""
    return field(default=default, metadata={"cli": Option(help=help, **spec)})


def required(help: str = "", **spec) -> Any:
    """A request field the command cannot run without."""
    return field(metadata={"cli": Option(help=help, **spec)})


def _options(request_type) -> list[tuple[dataclasses.Field, Option]]:
    """The fields with their options: the command's own first, then those it shares (device, events)."""
    shared = {f.name for base in request_type.__mro__[1:] if dataclasses.is_dataclass(base)
              for f in dataclasses.fields(base)}
    fields = [f for f in dataclasses.fields(request_type) if "cli" in f.metadata]
    return [(f, f.metadata["cli"]) for f in sorted(fields, key=lambda f: f.name in shared)]


def _check(opt: Option, name: str, value: Any) -> None:
    """ValueError naming the flag unless `value` is what the command line would accept."""
    if value is None or opt.switch:
        return
    if opt.many and not value:
        raise ValueError(f"{opt.flag(name)} needs at least one value")
    for item in (value if opt.many else [value]):
        text = repr(item) if isinstance(item, float) else str(item)
        if opt.parse is not None:
            try:
                opt.parse(text)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise ValueError(f"{opt.flag(name)}: {exc}") from None
        choices = opt.choice_list()
        if choices is not None and item not in choices:
            raise ValueError(f"{opt.flag(name)}: {item!r} is not one of {', '.join(map(str, choices))}")


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


class Request:
    """What every command's request shares: canonical values, argv, the parser, and the way back."""

    COMMAND: ClassVar[str] = ""
    HELP: ClassVar[str] = ""

    def __post_init__(self) -> None:
        """Canonical values, then the one check of each value (the same parser the command line uses)."""
        for f, opt in _options(type(self)):
            value = getattr(self, f.name)
            if opt.canonical is not None:
                value = opt.canonical(value)
            if value == "" and not _is_required(f):
                value = None  # an empty text box means "not set"
            object.__setattr__(self, f.name, value)
            _check(opt, f.name, value)
            if opt.needs and value not in (None, False, f.default) and not getattr(self, opt.needs):
                raise ValueError(f"{opt.flag(f.name)} needs {_long_flag(opt.needs)}")
        for group in dict.fromkeys(opt.group for _, opt in _options(type(self)) if opt.group):
            names = [f.name for f, opt in _options(type(self)) if opt.group == group]
            if sum(bool(getattr(self, name)) for name in names) > 1:
                raise ValueError(f"{self.COMMAND}: give one of {', '.join(names[:-1])} or {names[-1]}")

    def argv(self) -> list[str]:
        """The command line that asks for exactly this request: the command, then every value that is not its
        default (the parser gives the default back)."""
        args = [self.COMMAND]
        for f, opt in _options(type(self)):
            value = getattr(self, f.name)
            if opt.switch:
                args += [opt.flag(f.name)] if value else []
                continue
            if not _is_required(f) and value == f.default:
                continue
            if value is None:
                raise ValueError(f"{self.COMMAND}: {opt.flag(f.name)} needs a value")
            values = [str(v) for v in value] if opt.many else [repr(value) if isinstance(value, float) else str(value)]
            args += values if opt.positional else [opt.flag(f.name), *values]
        return args

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace):
        return cls(**{f.name: getattr(namespace, f.name) for f, _ in _options(cls)})

    @classmethod
    def add_parser(cls, subparsers) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(cls.COMMAND, help=cls.HELP)
        groups: dict[str, Any] = {}
        for f, opt in _options(cls):
            target = parser
            if opt.group:
                if opt.group not in groups:
                    groups[opt.group] = parser.add_mutually_exclusive_group()
                target = groups[opt.group]
            kwargs: dict[str, Any] = {"help": opt.help or None}
            if opt.switch:
                kwargs.update(action="store_true", default=f.default)
            else:
                kwargs.update(type=opt.parse, choices=opt.choice_list())
                if opt.many:
                    kwargs["nargs"] = "+"
                if _is_required(f):
                    if not opt.positional:  # a positional argument is required by being there
                        kwargs["required"] = True
                else:
                    kwargs["default"] = f.default
                    if opt.positional:
                        kwargs["nargs"] = "?"
            if opt.positional:
                target.add_argument(f.name, **kwargs)
            else:
                target.add_argument(opt.flag(f.name), **kwargs)
        return parser


def _profiles() -> list[str]:
    return list(PROFILES)  # read when the parser is built, so a profile registered at run time is offered too


@dataclass(frozen=True, kw_only=True)
class EngineRequest(Request):
    """A command that runs the engine in one output folder: on a device, reporting through the event stream (which
    the Slicer module always asks for: jobs/commands.build_command)."""

    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    events: bool = option(False, "print JSON-lines events on stdout", switch=True)


# ----------------------------------------------------------------------------------------------- the commands
@dataclass(frozen=True, kw_only=True)
class PhantomsRequest(Request):
    COMMAND: ClassVar[str] = "phantoms"
    HELP: ClassVar[str] = "write a synthetic data set in the on-disk layout real data uses"

    profile: str = required(choices=_profiles)
    num: int = required("number of cases (CT volumes / ACDC patients)", parse=positive)
    out: str = required("folder to create")
    seed: int = option(0, parse=seed_value)
    size: str | None = option(None, "image size XxYxZ in voxels (default: 512x512x26 for CT, 216x256x10 for masks)",
                              canonical=size_text)
    with_labels: bool = option(False, "CT phantoms with their organ label maps, in the nnU-Net raw layout "
                                      "(imagesTr/, labelsTr/, dataset.json)", switch=True)


@dataclass(frozen=True, kw_only=True)
class TrainRequest(EngineRequest):
    COMMAND: ClassVar[str] = "train"
    HELP: ClassVar[str] = "train a diffusion model; writes a run folder with checkpoints and a model bundle"

    profile: str = required(choices=_profiles)
    data: list[str] | None = option(
        None, "a folder (volumes, DICOM series or ACDC layout), several files, or a .txt list of files (required for "
              "a new run; a resumed run reuses its own)", many=True, canonical=paths_list)
    out: str = required("run folder (new, or an existing run with --resume)")
    preset: str | None = option(None, "network/grid preset (see docs/presets.md); default depends on profile")
    epochs: int | None = option(None, parse=positive, group="length")
    steps: int | None = option(None, parse=positive, group="length")
    minutes: float | None = option(None, "train for about this many minutes: the step count is planned from the "
                                         "measured speed (docs/engine.md)", parse=minutes_value, group="length")
    batch_size: int | None = option(None, parse=positive)
    lr: float | None = option(None, "peak learning rate (AdamW)", parse=finite_number(0, above=True))
    warmup_steps: int | None = option(None, parse=non_negative)
    schedule: str | None = option(None, "beta schedule", choices=("linear", "cosine"))
    prediction: str | None = option(None, "what the network predicts", choices=("epsilon", "v"))
    objective: str | None = option(None, "ddpm (DDPM schedule, epsilon/v targets) or flow (rectified flow); "
                                         "default: the preset's (ddpm)", choices=OBJECTIVES)
    min_snr_gamma: float | None = option(None, "weight the loss by Min-SNR-gamma (e.g. 5; 0: plain MSE; default: "
                                               "the preset's)", parse=finite_number(0))
    grid: str | None = option(None, "training grid XxYxZ (or XxY for 2D masks); overrides the preset",
                              canonical=size_text)
    val_fraction: float | None = option(None, "share of cases held out for validation (0.2)", parse=fraction)
    augment: str | None = option(None, "comma list of zoom,flip,rotate or 'none' (default: the profile's "
                                       "augmentation)", canonical=augment_text)
    conditions: str | None = option(None, "condition on these keys (e.g. group,phase from ACDC Info.cfg) or a CSV "
                                          "file with a 'file' column and one column per condition",
                                    canonical=names_text)
    cond_drop: float | None = option(None, "probability of dropping the conditions during training "
                                           "(classifier-free guidance, 0.15)", parse=fraction)
    with_labels: bool = option(False, "learn CT + label-map pairs (nnU-Net/Decathlon, TotalSegmentator or "
                                      "NAME.seg.nrrd): a CT model conditioned on the label map and a label-map model, "
                                      "in one run (docs/engine.md)", switch=True)
    structures: str | None = option(None, "with --with-labels: the structures to learn, e.g. "
                                          "prostate,bladder,femur=femur_l+femur_r (default: every structure in the "
                                          "data)", needs="with_labels")
    label_conditioning: str = option("concat", "with --with-labels: how the CT model reads its label map: concat (as "
                                               "input channels) or controlnet (a ControlNet-style encoder branch; "
                                               "docs/engine.md compares them)", choices=("concat", "controlnet"),
                                     needs="with_labels")
    checkpoint_every: int | None = option(None, "steps between checkpoints", parse=positive)
    sample_every: int | None = option(None, "steps between preview samples (0: off)", parse=non_negative)
    seed: int | None = option(None, parse=seed_value)
    resume: bool = option(False, "continue the run in --out from its newest checkpoint", switch=True)
    accept_changed_data: bool = option(False, "with --resume: continue although cases of the data were removed, "
                                              "added or replaced since the run started (refused otherwise; the "
                                              "split is drawn again)", switch=True, needs="resume")
    amp: str | None = option(None, "bf16 autocast (auto: on for CUDA)", choices=("auto", "on", "off"))
    compile: bool | None = option(None, "torch.compile the network (CUDA)", switch=True)
    grad_checkpoint: bool | None = option(None, "trade compute for memory", switch=True)


@dataclass(frozen=True, kw_only=True)
class GenerateRequest(EngineRequest):
    COMMAND: ClassVar[str] = "generate"
    HELP: ClassVar[str] = "sample new volumes from a trained model"

    model: str = required("a run folder or a model bundle folder")
    out: str = required()
    num: int | None = option(None, "how many volumes (on a paired run: new CT + label pairs)", parse=positive)
    from_labels: str | None = option(None, "a paired run: one CT for each label map in this file or folder, on its "
                                           "grid")
    sampler: str | None = option(None, "default: the model's objective's own (" + ", ".join(
        f"{objective}: {name}" for objective, name in DEFAULT_SAMPLER.items()) + ")", choices=sampler_names)
    steps: int | None = option(None, "sampling steps (default per sampler: " + ", ".join(
        f"{name} {spec.steps}" for name, spec in SAMPLERS.items()) + ")", parse=positive)
    seed: int = option(0, parse=seed_value)
    batch_size: int | None = option(None, parse=positive)
    reference: str | None = option(None, "copy spacing/origin/direction from this volume")
    condition: str | None = option(None, "e.g. group=DCM,phase=ED (models trained with conditions)",
                                   canonical=condition_text)
    guidance_scale: float | None = option(None, "classifier-free guidance weight (default 3 for --condition, 1 for a "
                                                "paired run's CT)", parse=finite_number(0))


@dataclass(frozen=True, kw_only=True)
class EvaluateRequest(EngineRequest):
    COMMAND: ClassVar[str] = "evaluate"
    HELP: ClassVar[str] = "quality report: realism, diversity, novelty of generated vs real volumes"

    real: str = required("real (held-out) data: folder, ACDC layout or run folder")
    generated: str = required("folder written by `generate`")
    out: str = required("report folder (metrics.json, report.html, figures)")
    train: str | None = option(None, "training data, for the memorisation check")
    profile: str | None = option(None, "default: read from the generated sidecars", choices=_profiles)
    run: str | None = option(None, "run folder, to include loss curves")
    feature_weights: str | None = option(None, "safetensors weights of a feature network to use instead of the "
                                               "self-trained one")
    utility: str | None = option(None, "the --out folder (or utility.json) of `ctdiffusion utility`: shown as a "
                                       "section of the report")
    no_adherence: bool = option(False, "paired output: skip the per-structure Dice of the generated CT against its "
                                       "label map (it trains the benchmark's segmenter on --train)", switch=True)
    seed: int = option(0, parse=seed_value)


@dataclass(frozen=True, kw_only=True)
class UtilityRequest(EngineRequest):
    COMMAND: ClassVar[str] = "utility"
    HELP: ClassVar[str] = ("downstream benchmark: does adding synthetic pairs help a segmenter on held-out real pairs? "
                           "(real / synthetic / real+synthetic arms)")

    train: str = required("real training pairs (nnU-Net raw layout or any pairs layout); for cardiac masks an ACDC "
                          "folder")
    synthetic: str = required("synthetic pairs (e.g. written by `generate` on a paired run), or masks from a "
                              "group-conditioned cardiac model")
    test: str = required("held-out REAL data (pairs or ACDC), in neither --train nor --synthetic")
    out: str = required("folder for utility.json, the figure and events.jsonl")
    seeds: int = option(3, "training seeds per arm (3)", parse=positive)
    ratio: float = option(1.0, "synthetic cases per real case in the mixed arm (1)", parse=finite_number(0, above=True))
    structures: str | None = option(None, "e.g. prostate,bladder,femur=femur_left+femur_right (default: every "
                                          "structure of --train)")
    iterations: int | None = option(None, "segmenter (classifier) training iterations per arm and seed (default: "
                                          "scaled to the real count)", parse=positive)
    segmenter: str = option("monai", "monai (built in) or nnunet (nnU-Net v2, when installed: pip install nnunetv2 "
                                     "-c constraints.txt)", choices=("monai", "nnunet"))
    seed: int = option(0, "first seed (seeds are SEED .. SEED+K-1)", parse=seed_value)


@dataclass(frozen=True, kw_only=True)
class DemoRequest(Request):
    COMMAND: ClassVar[str] = "demo"
    HELP: ClassVar[str] = "phantoms -> train (tiny, CPU) -> generate -> evaluate, in a few minutes"

    out: str = option("demo_output")
    profile: str = option(PROSTATE_CT.name, choices=_profiles)
    device: str = option("cpu")
    steps: int | None = option(None, "training steps (default: the demo's own: 11 minutes of training for CT, 300 "
                                     "steps for masks)", parse=positive, group="length")
    minutes: float | None = option(None, "train for this many minutes instead", parse=minutes_value, group="length")
    with_labels: bool = option(False, "the paired demo: CT + organ-label phantoms, CT for held-out label maps and new "
                                      "pairs (8 minutes of training: half per model)", switch=True)


@dataclass(frozen=True, kw_only=True)
class ViewRequest(Request):
    COMMAND: ClassVar[str] = "view"
    HELP: ClassVar[str] = "browser viewer: real vs synthetic slices, quality report, live training"

    folder: str | None = option(None, "a run folder, a folder written by `generate`, a report folder, or a `demo` "
                                      "output folder", positional=True)
    real: str | None = option(None, "folder of real volumes (default: the run's training data)")
    generated: str | None = option(None, "folder of generated volumes")
    report: str | None = option(None, "report folder with metrics.json (written by `evaluate`)")
    profile: str | None = option(None, "data type, when no run config, sidecar or report names it", choices=_profiles)
    host: str = option("127.0.0.1", "address to listen on (default: this machine only; 0.0.0.0 exposes the data to "
                                    "the network)")
    port: int = option(8080, parse=int)  # checked by web/command.py, which names the port in use too
    cache: int = option(3, "volumes per side kept in memory while browsing", parse=int)


REQUESTS: dict[str, type[Request]] = {r.COMMAND: r for r in (
    PhantomsRequest, TrainRequest, GenerateRequest, EvaluateRequest, UtilityRequest, DemoRequest, ViewRequest)}


def request_from(namespace: argparse.Namespace) -> Request:
    """The command's request from parsed arguments (a value argparse refuses has exited 2 already); a rule between
    fields (e.g. --structures needs --with-labels) is an InputError (exit 2, one sentence)."""
    try:
        return REQUESTS[namespace.command].from_namespace(namespace)
    except ValueError as exc:
        raise InputError(f"{exc}.", f"See `ctdiffusion {namespace.command} --help`.") from None
