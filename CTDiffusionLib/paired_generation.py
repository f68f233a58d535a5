"""`generate` from a paired run (`train --with-labels`): the CT for given label maps, or new CT + label pairs.

  - `--from-labels FILE_OR_DIR`: one CT per label map, on that label map's grid (exactly its size, spacing, origin
    and direction). The model grid is laid over the label map's field of view (as `--reference` does for an
    unpaired CT), the label map is brought onto it nearest-neighbour, the CT is sampled with classifier-free
    guidance (eps = uncond + w (cond - uncond), uncond = the all-zero null condition) and resampled onto the label
    map's own grid. Label names come from the folder's dataset.json or the .seg.nrrd's segments when there are
    any, else the values are taken as the model's.
  - `--num N`: the label model (RUN/labels/model) samples N label maps on the model grid, the CT model the CT of
    each.
Both write the nnU-Net raw layout (data/pairs.write_nnunet_pairs: imagesTr/CASE_0000.nii.gz int16 HU,
labelsTr/CASE.nii.gz uint8 0..K, dataset.json with the structures and numTraining) plus one JSON sidecar per case
in sidecars/.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from CTDiffusionLib.data.paired_dataset import as_structures, condition_to_unit
from CTDiffusionLib.data.preprocess import ct_grid_geometry, reorient
from CTDiffusionLib.data.volume_io import Geometry, array_to_image, image_suffix, read_label_image, \
    strip_image_suffix
from CTDiffusionLib.diffusion.sampling import sample
from CTDiffusionLib.diffusion.schedulers import bundle_scheduler, default_sampler, preview_sampler, sampler
from CTDiffusionLib import stopping
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.label_sets import generates_label_maps, is_paired_ct
from CTDiffusionLib.runfolder import EVENTS, BundleFolder, write_json
from CTDiffusionLib.samplers import PAIRED_CT_GUIDANCE, default_steps, network_evaluations

log = logging.getLogger("ctdiffusion")
SIDECARS = "sidecars"
_MAX_LABEL_VALUE = 2 ** 16


# ---------------------------------------------------------------------------------------------- requests
def check_request(args, meta: dict) -> None:
    """Refuse what a paired or unpaired bundle cannot do, before anything is written."""
    from_labels = getattr(args, "from_labels", None)
    if from_labels and not is_paired_ct(meta):
        raise InputError(f"--from-labels: the model {meta['_folder']} was trained without label maps.",
                         "Use a run trained with `train --with-labels`, or drop --from-labels.")
    if not is_paired_ct(meta):
        if getattr(args, "num", None) is None:
            raise InputError("--num is required.", "Say how many volumes to generate, e.g. --num 8.")
        return
    if from_labels and getattr(args, "num", None) is not None:
        raise InputError("--from-labels writes one CT per label map; --num cannot be added to it.",
                         "Drop --num (or drop --from-labels to generate new pairs).")
    if not from_labels and getattr(args, "num", None) is None:
        raise InputError("A paired model needs --num N (new pairs) or --from-labels PATH (CT for label maps).",
                         "For example --num 8.")
    if getattr(args, "condition", None) or getattr(args, "reference", None):
        raise InputError("--condition and --reference do not apply to a paired model.",
                         "A paired model is conditioned on label maps: use --from-labels to choose the grid.")


def label_bundle_of(meta: dict) -> Path:
    """The label model bundle beside a paired CT bundle (recorded relative to it)."""
    folder = (Path(meta["_folder"]) / meta["labels"].get("label_bundle", "../labels/model")).resolve()
    if not BundleFolder(folder).meta.is_file():
        raise InputError(f"The paired model {meta['_folder']} has no label model at {folder}.",
                         "Copy the run's labels/model folder with it, or generate with --from-labels.")
    return folder


# ---------------------------------------------------------------------------------------------- label maps in
def label_map_files(source) -> list[Path]:
    """A label file, or every label file of a folder (an nnU-Net dataset's labelsTr/ when it has one)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"--from-labels {path} does not exist.", "Give a label file or a folder of them.")
    if path.is_file():
        return [path]
    if (path / "labelsTr").is_dir():
        path = path / "labelsTr"
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and image_suffix(p))
    if not files:
        raise InputError(f"--from-labels {path} holds no label files.", "Give .nii.gz, .nrrd or .seg.nrrd files.")
    return files


def source_label_names(path: Path) -> dict[int, str] | None:
    """{value: name} as the data names them (Slicer segments; nnU-Net/Decathlon dataset.json beside labelsTr/ or
    in the same folder), or None when nothing names them."""
    from CTDiffusionLib.data.pairs import label_names_from_dataset_json, seg_nrrd_label_names
    from CTDiffusionLib.runfolder import read_json

    if path.name.lower().endswith(".seg.nrrd"):
        return seg_nrrd_label_names(path)
    for folder in (path.parent, path.parent.parent):
        dataset = folder / "dataset.json"
        if dataset.is_file():
            return label_names_from_dataset_json(read_json(dataset, "label names of the data set"), dataset)
    return None


def read_model_labels(path: Path, structures: list[dict]) -> sitk.Image:
    """The label map at `path` with its values turned into the model's (0..K); InputError when it holds none of
    the model's structures or values the model does not know."""
    image = read_label_image(path, _MAX_LABEL_VALUE)
    names = source_label_names(path)
    values = np.unique(sitk.GetArrayViewFromImage(image))
    values = [int(v) for v in values if v != 0]
    known = ", ".join(s["name"] for s in structures)
    lookup = np.zeros(max(values, default=0) + 1, np.uint8)
    unknown = []
    for v in values:
        if names is None:
            target = v if v <= len(structures) else None
        else:
            name = names.get(v)
            target = next((s["value"] for s in structures if name is not None and
                           (name == s["name"] or name in s["sources"])), None)
        if target is None:
            unknown.append(f"{v} ({names[v]})" if names and v in names else str(v))
        else:
            lookup[v] = target
    if unknown:
        raise InputError(f"The label map {path} holds label value(s) {', '.join(unknown[:8])} that the model does "
                         f"not know.", f"The model knows {known}; set other voxels to 0 (or name them so in "
                         "dataset.json / the segments).")
    if not values:
        raise InputError(f"The label map {path} holds none of the model's structures (it is all background).",
                         f"The model knows {known}.")
    mapped = sitk.GetImageFromArray(lookup[sitk.GetArrayViewFromImage(image)])
    mapped.CopyInformation(image)
    return mapped


def onto_model_grid(labels: sitk.Image, meta: dict) -> tuple[np.ndarray, Geometry]:
    """(uint8 (z, y, x) labels on the model grid laid over the label map's field of view, that grid's geometry)."""
    seen = reorient(labels, meta.get("orientation") or "LPS")
    grid = meta["data"]["grid"]
    spacing, origin, direction = ct_grid_geometry(seen, grid)
    on_grid = sitk.Resample(seen, [int(g) for g in grid], sitk.Transform(), sitk.sitkNearestNeighbor, origin,
                            spacing, direction, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(on_grid), Geometry(spacing, origin, direction)


def case_id_of(path: Path) -> str:
    from CTDiffusionLib.data.discovery import _safe_id

    stem = strip_image_suffix(path)
    return _safe_id(stem[: -len(".seg")] if stem.lower().endswith(".seg") else stem)


# ---------------------------------------------------------------------------------------------- sampling
def sample_ct(model, meta: dict, label_maps: list[np.ndarray], seeds: list[int], *, sampler_name: str, steps: int,
              guidance: float, device, autocast_dtype=None, on_step=None) -> list[np.ndarray]:
    """int16 HU (z, y, x) on the model grid, one per label map (uint8 0..K on the model grid)."""
    from CTDiffusionLib.generation import decode, model_input_shape

    condition = torch.stack([torch.from_numpy(condition_to_unit(m, len(meta["labels"]["structures"])))
                             for m in label_maps])
    sched = sampler(sampler_name, meta["diffusion"], steps, base=bundle_scheduler(meta))
    x0 = sample(model, sched, model_input_shape(meta), seeds, device, guidance_scale=guidance,
                autocast_dtype=autocast_dtype, on_step=on_step, spatial_condition=condition)
    return decode(x0, meta)


def sample_label_maps(model, meta: dict, seeds: list[int], *, sampler_name: str, steps: int, device,
                      autocast_dtype=None, on_step=None) -> list[np.ndarray]:
    """uint8 label maps 0..K (z, y, x) on the model grid from the label model."""
    from CTDiffusionLib.generation import decode, model_input_shape

    sched = sampler(sampler_name, meta["diffusion"], steps, base=bundle_scheduler(meta))
    x0 = sample(model, sched, model_input_shape(meta), seeds, device, autocast_dtype=autocast_dtype,
                on_step=on_step)
    return decode(x0, meta)


def ct_image(hu: np.ndarray, geometry: Geometry, onto: sitk.Image | None, fill_hu: float) -> sitk.Image:
    """The generated CT as an image on the model grid, or resampled (linear) onto `onto`'s exact grid."""
    image = array_to_image(hu, geometry)
    if onto is None:
        return image
    return sitk.Resample(image, onto, sitk.Transform(), sitk.sitkLinear, float(fill_hu), image.GetPixelID())


def preview_ct(model, meta: dict, label_maps: list[np.ndarray], folder: Path, *, seed: int, device,
               autocast_dtype=None, prefix: str) -> list[Path]:
    """A paired CT model's training previews: the CT of the given training label maps (the objective's preview
    sampler, at the paired default guidance)."""
    from CTDiffusionLib.generation import write_volume

    name, steps = preview_sampler(meta["diffusion"])
    hus = sample_ct(model, meta, label_maps, [seed + i for i in range(len(label_maps))], sampler_name=name,
                    steps=steps, guidance=PAIRED_CT_GUIDANCE, device=device, autocast_dtype=autocast_dtype)
    geometry = Geometry.from_dict(meta["geometry"])
    return [write_volume(hu, geometry, Path(folder) / f"{prefix}_{i:04d}.nii.gz") for i, hu in enumerate(hus, 1)]


# ---------------------------------------------------------------------------------------------- writing
def write_pairs(out: Path, pairs, structures: list[dict], meta: dict) -> list[dict]:
    """Write (case_id, CT image, label image, sidecar) items in the nnU-Net raw layout into `out` (which may
    already hold events.jsonl and the output folder's marker and lock): built beside it, then moved in."""
    from CTDiffusionLib.data.pairs import write_nnunet_pairs

    sidecars: list[dict] = []

    def items():
        for case_id, ct, labels, sidecar in pairs:
            sidecars.append(sidecar)
            yield case_id, ct, labels

    staging = out / f".pairs-staging-{os.getpid()}"
    try:
        write_nnunet_pairs(staging, items(), as_structures(structures),
                           extra={"description": f"CTDiffusion paired generation from {meta['_folder']}"})
        for sidecar in sidecars:
            write_json(staging / SIDECARS / f"{sidecar['case']}.json", sidecar)
        for entry in sorted(staging.iterdir()):
            os.replace(entry, out / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sidecars


def generate_paired_from_args(args, events, out: Path, model, meta: dict, device) -> int:
    """`generate` on a paired CT bundle (inside generate's claim on `out`)."""
    from CTDiffusionLib.models.bundle import load_bundle
    from CTDiffusionLib.runtime import autocast_dtype as autocast_for

    structures = meta["labels"]["structures"]
    if any((out / name).exists() for name in ("imagesTr", "labelsTr", "dataset.json")):
        raise InputError(f"{out} already holds generated pairs.", "Choose an empty or new --out folder.")
    sampler_name = args.sampler or default_sampler(meta["diffusion"])
    steps = args.steps or default_steps(sampler_name)
    guidance = PAIRED_CT_GUIDANCE if args.guidance_scale is None else float(args.guidance_scale)
    amp = autocast_for(device, None)
    fill_hu = float(meta["intensity"].get("hu", meta["intensity"].get("hu_range", [-1024.0]))[0])
    ct_evaluations = network_evaluations(sampler_name, steps, guidance != 1.0)
    if args.from_labels:
        sources = label_map_files(args.from_labels)
        inputs = [(case_id_of(p), read_model_labels(p, structures), p) for p in sources]  # all refusals first
        label_model = label_meta = None
    else:
        label_model, label_meta = load_bundle(label_bundle_of(meta), device)
        if not generates_label_maps(label_meta):
            raise InputError(f"{label_meta['_folder']} is not a label model.", "Re-copy the run's labels/model.")
        inputs = [(f"synthetic_{i:04d}", None, None) for i in range(1, args.num + 1)]
    total = len(inputs)
    events.set_log_path(out / EVENTS)
    events.emit("start", command="generate", model=meta["_folder"], num=total, sampler=sampler_name, steps=steps,
                out=str(out), device=str(device), mode="from-labels" if args.from_labels else "pairs")
    t0 = time.time()

    batch = args.batch_size or (8 if device.type == "cuda" else 2)  # batch-1 3D convolutions are slow on a CPU

    def on_step(i: int, n: int) -> None:  # a stop request ends the job at a clean point: nothing is left behind
        stopping.check("Generation stopped; no pairs were kept.", "Run generate again into a new --out folder.")

    def pairs():
        for start in range(0, total, batch):
            chunk = list(enumerate(inputs[start:start + batch], start=start + 1))
            seeds = [args.seed + index - 1 for index, _ in chunk]
            if args.from_labels:  # CT for given label maps, each on its own grid
                placed = [onto_model_grid(labels, meta) for _, (_, labels, _) in chunk]
                grid_labels, geometries = [p[0] for p in placed], [p[1] for p in placed]
                label_images = [labels for _, (_, labels, _) in chunk]
            else:  # new label maps first, on the model grid
                grid_labels = sample_label_maps(label_model, label_meta, seeds, sampler_name=sampler_name,
                                                steps=steps, device=device, autocast_dtype=amp, on_step=on_step)
                geometries = [Geometry.from_dict(meta["geometry"])] * len(chunk)
                label_images = [array_to_image(m, g) for m, g in zip(grid_labels, geometries)]
            hus = sample_ct(model, meta, grid_labels, seeds, sampler_name=sampler_name, steps=steps,
                            guidance=guidance, device=device, autocast_dtype=amp, on_step=on_step)
            for (index, (case_id, _, source)), seed, hu, geometry, labels in zip(chunk, seeds, hus, geometries,
                                                                                 label_images):
                sidecar = {"case": case_id, "index": index, "seed": seed, "sampler": sampler_name, "steps": steps,
                           "guidance_scale": guidance, "model_sha256": meta.get("sha256"),
                           "profile": meta["profile"], "image": f"imagesTr/{case_id}_0000.nii.gz",
                           "labels": f"labelsTr/{case_id}.nii.gz", "network_evaluations": ct_evaluations}
                if source is not None:
                    sidecar["from_labels"] = str(source)
                else:
                    sidecar["network_evaluations"] += network_evaluations(sampler_name, steps)  # its label map
                    sidecar["label_model_sha256"] = label_meta.get("sha256")
                ct = ct_image(hu, geometry, labels if source is not None else None, fill_hu)
                events.emit("sample", index=index, num=total, case=case_id)
                yield case_id, ct, labels, sidecar

    sidecars = write_pairs(out, pairs(), structures, meta)
    seconds = time.time() - t0
    events.emit("done", status="completed", outputs=[str(out / s["image"]) for s in sidecars], seconds=seconds,
                seconds_per_volume=seconds / max(1, len(sidecars)))
    log.info("wrote %d CT + label pairs to %s (%.1f s per pair)", len(sidecars), out, seconds / max(1, len(sidecars)))
    return 0
