"""Where the Slicer module's paired jobs (CT + label pairs, issue 26 item 5) and its downstream benchmark (issue 27
item 6) read and write, and what they send, decided outside the GUI. Stdlib only; each function is a plain
decision a test can check.

- Train with labels: the chosen structures become --structures (None when every structure is chosen, so the run
  stores "all"); volume + segmentation nodes are paired by the segmentation's reference volume, else in order.
- Generate CT for a segmentation: the segmentation is written as a label map next to the generation folder and
  sent as --from-labels; the folder that comes back is a pairs folder (nnU-Net raw layout).
- Utility: its own folder in the run (utility-STAMP); --train defaults to the run's own data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from CTDiffusionLib.jobs.commands import run_data_sources
from CTDiffusionLib.jobs.plans import _stamp, generation_folder, unique_folder

DATASET_JSON = "dataset.json"


def structures_spec(chosen, available) -> str | None:
    """--structures for the checked structure names: None when all of `available` are checked (the default: every
    structure in the data), else the checked ones in the data's order. Raises ValueError when none is checked."""
    chosen = [name for name in available if name in set(chosen)]
    if not chosen:
        raise ValueError("Tick at least one structure to learn.")
    return None if len(chosen) == len(list(available)) else ",".join(chosen)


def pair_nodes(volumes, segmentations, reference_of) -> list[tuple]:
    """(volume, segmentation) pairs for training: each segmentation with its reference volume (`reference_of(seg)`,
    the volume it was drawn on) when that volume is chosen, the remaining ones in the order given. Raises
    ValueError with the sentence to show when the counts differ or nothing is chosen."""
    volumes, segmentations = list(volumes), list(segmentations)
    if not volumes or not segmentations:
        raise ValueError("Select the CT volumes and the segmentation drawn on each of them.")
    if len(volumes) != len(segmentations):
        raise ValueError(f"{len(volumes)} volumes and {len(segmentations)} segmentations are selected: pick one "
                         "segmentation per volume.")
    pairs, free = {}, list(volumes)
    for seg in segmentations:
        reference = reference_of(seg)
        if reference is not None and reference in free:
            pairs[id(seg)] = reference
            free.remove(reference)
    for seg in segmentations:
        if id(seg) not in pairs:
            pairs[id(seg)] = free.pop(0)
    return [(pairs[id(seg)], seg) for seg in segmentations]


@dataclass(frozen=True)
class LabelsGeneration:
    """`generate --from-labels`: the label-map file the segmentation is written to and the output folder."""

    labels_file: Path
    out: Path


def labels_generation(model_source: str, last_run: str, runs_folder: str | Path, stem: str,
                      now: float | None = None) -> LabelsGeneration:
    """generated-STAMP as for any generation; the label map beside it (generated-STAMP-labels/STEM.nii.gz, its file
    name becoming the case id of the CT that comes back)."""
    out = generation_folder(model_source, last_run, runs_folder, now)
    return LabelsGeneration(out.with_name(out.name + "-labels") / f"{stem}.nii.gz", out)


def is_pairs_folder(folder: str | Path | None) -> bool:
    """A folder `generate` wrote on a paired run: the nnU-Net raw layout (imagesTr/, labelsTr/, dataset.json)."""
    if not folder:
        return False
    folder = Path(folder)
    return (folder / DATASET_JSON).is_file() and (folder / "labelsTr").is_dir() and (folder / "imagesTr").is_dir()


def utility_folder(last_run: str, runs_folder: str | Path, now: float | None = None) -> Path:
    """utility-STAMP inside this session's run (else the runs folder): utility.json, the figure, events.jsonl."""
    return unique_folder(Path(last_run or runs_folder) / f"utility-{_stamp(now)}")


@dataclass(frozen=True)
class UtilityInputs:
    train: str
    synthetic: str
    test: str


def utility_inputs(train: str, synthetic: str, test: str, last_run: str, last_generated: str) -> UtilityInputs:
    """The three pair sets of the benchmark: --train defaults to the run's own data (when it is one folder),
    --synthetic to the last generation. Raises ValueError with the sentence to show."""
    if not train:
        sources = run_data_sources(last_run) if last_run else []
        train = sources[0] if len(sources) == 1 else ""
    if not train:
        raise ValueError("Choose the real training pairs (the folder the model was trained on).")
    synthetic = synthetic or last_generated or ""
    if not synthetic:
        raise ValueError("Generate pairs first, or choose a folder of synthetic pairs.")
    if not test:
        raise ValueError("Choose held-out real pairs to test on (in neither the training nor the synthetic folder).")
    return UtilityInputs(str(train), str(synthetic), str(test))
