"""`generate`: sample N volumes from a bundle and write them with real geometry, units and a JSON sidecar."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from CTDiffusionLib.data.preprocess import ct_grid_geometry, from_unit, reorient
from CTDiffusionLib.data.volume_io import Geometry, array_to_image, read_image, write_failed, write_image
from CTDiffusionLib.diffusion.sampling import sample
from CTDiffusionLib.diffusion.schedulers import DEFAULT_SAMPLER_STEPS, bundle_scheduler, default_sampler, sampler
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.label_sets import is_paired_ct
from CTDiffusionLib.models.conditioning import ConditionVocabulary, parse_condition_text
from CTDiffusionLib.models.speed import apply_speed_settings
from CTDiffusionLib.output_folder import check_output_folder, claim_output_folder
from CTDiffusionLib import stopping
from CTDiffusionLib.profiles import get_profile
from CTDiffusionLib.runfolder import EVENTS, write_json
from CTDiffusionLib.samplers import DEFAULT_GUIDANCE, network_evaluations  # noqa: F401 (DEFAULT_GUIDANCE: re-exported)
from CTDiffusionLib.threads import ThreadGovernor

log = logging.getLogger("ctdiffusion")


def model_input_shape(meta: dict) -> tuple[int, ...]:
    """(channels, spatial...) in the tensor order (z, y, x) / (y, x)."""
    grid = meta["data"]["grid"]
    channels = meta["model"]["kwargs"]["out_channels"]  # a paired CT model takes more in (its label map)
    spatial = (grid[1], grid[0]) if meta["data"]["mode"] == "2d" else (grid[2], grid[1], grid[0])
    return (channels, *spatial)


def decode(x0: torch.Tensor, meta: dict) -> list[np.ndarray]:
    """Model-space batch -> arrays in real units, (z, y, x): CT int16 HU, masks uint8 labels (2D: z = 1)."""
    out = []
    for x in x0.float().cpu().numpy():
        arr = from_unit(x, meta["intensity"])  # the mapping stored with the model, not today's profile defaults
        out.append(arr[None] if arr.ndim == 2 else arr)
    return out


def output_geometry(meta: dict, reference_image=None) -> Geometry:
    """Where the model grid lies: the training-set geometry from the bundle; with a reference, an intensity grid
    spans the reference's field of view and a label map (a crop) takes the reference's origin and direction."""
    g = meta["geometry"]
    if reference_image is None:
        return Geometry(tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))
    if meta.get("orientation"):  # the model's voxel order: place the grid on the reference seen in that order
        reference_image = reorient(reference_image, meta["orientation"])
    if not get_profile(meta["profile"]).is_label_map:
        return Geometry(*(tuple(v) for v in ct_grid_geometry(reference_image, g["size"])))
    return Geometry(tuple(g["spacing"]), tuple(reference_image.GetOrigin()), tuple(reference_image.GetDirection()))


def write_volume(array: np.ndarray, geometry: Geometry, path: Path, resample_to=None, fill_value: float = 0.0
                 ) -> Path:
    """Write one generated volume; with `resample_to` (an intensity reference) it goes onto that image's exact voxel
    grid, so it overlays the real scan voxel for voxel (the model grid already spans the same field of view);
    `fill_value` outside the generated grid, voxel type unchanged."""
    image = array_to_image(array, geometry)
    if resample_to is not None:
        image = sitk.Resample(image, resample_to, sitk.Transform(), sitk.sitkLinear, float(fill_value),
                              image.GetPixelID())
    return write_image(image, path, exclusive=True)  # never replaces a volume already there


def generate(model: torch.nn.Module, meta: dict, num: int, out: Path, *, sampler_name: str | None = None,
             steps: int | None = None, seed: int = 0, batch_size: int | None = None, reference: str | None = None,
             condition: dict | None = None, guidance_scale: float | None = None, device: torch.device | None = None,
             autocast_dtype=None, events=None, prefix: str = "synthetic") -> list[Path]:
    device = device or torch.device("cpu")
    profile = get_profile(meta["profile"])
    vocab = ConditionVocabulary(meta.get("conditions"))
    sampler_name = sampler_name or default_sampler(meta["diffusion"])
    steps = steps or DEFAULT_SAMPLER_STEPS[sampler_name]
    reference_image = read_image(reference, what="reference volume") if reference else None
    geometry = output_geometry(meta, reference_image)
    resample_to = None if profile.is_label_map else reference_image  # labels keep their crop grid
    shape = model_input_shape(meta)
    if vocab:
        labels_value = vocab.encode(condition)
        guidance = DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale
        guidance = 1.0 if not condition else guidance  # unconditional request: the null label alone
    else:
        labels_value, guidance = None, None
    batch_size = batch_size or (8 if device.type == "cuda" else 2)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    t0 = time.time()
    total_steps = num * steps
    threads = ThreadGovernor(device)  # CPU threads follow the cores other work leaves free
    for start in range(0, num, batch_size):
        indices = list(range(start + 1, min(num, start + batch_size) + 1))
        seeds = [seed + i - 1 for i in indices]
        sched = sampler(sampler_name, meta["diffusion"], steps, base=bundle_scheduler(meta))
        labels = null = None
        if vocab:
            labels = torch.full((len(seeds),), labels_value, dtype=torch.long, device=device)
            null = torch.full((len(seeds),), vocab.null_index, dtype=torch.long, device=device)

        def on_step(i: int, n: int, done_before=start) -> None:
            threads.tick()
            stopping.check(f"Generation stopped after {len(written)} of {num} volumes.",
                           f"The finished volumes (with their .json) are in {out}.")
            if events is None:
                return
            done = done_before * steps + i * len(seeds)
            rate = done / max(time.time() - t0, 1e-6)
            events.emit("progress", phase="sampling", step=done, total=total_steps, volume=indices[0], num=num,
                        it_per_s=rate, eta_s=(total_steps - done) / max(rate, 1e-9))

        run_seeds = seeds
        if len(seeds) == 1 and batch_size > 1 and device.type == "cpu":
            # batch-1 3D convolutions take a much slower CPU path; a throw-away second sample is cheaper
            run_seeds = seeds + [seeds[0] + 1_000_003]
            labels = labels.repeat(2) if labels is not None else None
            null = null.repeat(2) if null is not None else None
        x0 = sample(model, sched, shape, run_seeds, device, labels, null, guidance or 1.0, autocast_dtype, on_step)
        for index, s, arr in zip(indices, seeds, decode(x0[: len(seeds)], meta)):
            path = write_volume(arr, geometry, out / f"{prefix}_{index:04d}.nii.gz", resample_to, profile.fill_value)
            sidecar = {"file": path.name, "index": index, "seed": s, "sampler": sampler_name, "steps": steps,
                       "network_evaluations": network_evaluations(sampler_name, steps,
                                                                  bool(guidance) and guidance != 1.0),
                       "model_sha256": meta.get("sha256"), "profile": meta["profile"], "mode": meta["data"]["mode"],
                       "condition": condition or None, "guidance_scale": guidance,
                       "reference": str(reference) if reference else None}
            try:
                write_json(out / f"{prefix}_{index:04d}.json", sidecar, exclusive=True)
            except OSError as exc:  # disk full: a volume without its sidecar would be an incomplete output
                path.unlink(missing_ok=True)
                raise write_failed(out / f"{prefix}_{index:04d}.json", exc.strerror or str(exc)) from None
            written.append(path)
            if events is not None:
                events.emit("sample", path=str(path), index=index, num=num)
    return written


def generate_from_args(args, events) -> int:
    from CTDiffusionLib import paired_generation
    from CTDiffusionLib.models.bundle import load_bundle
    from CTDiffusionLib.runtime import resolve_device

    out = Path(args.out)
    check_output_folder(out, "generate")  # a folder of the user's: refused before anything is loaded or written
    _refuse_earlier_volumes(out)
    condition = parse_condition_text(args.condition)
    device = resolve_device(args.device)
    model, meta = load_bundle(args.model, device)
    paired_generation.check_request(args, meta)  # --from-labels / --num against what the bundle is
    apply_speed_settings(model, device, meta["data"]["mode"])  # channels-last on CUDA, as in training
    ConditionVocabulary(meta.get("conditions")).encode(condition)  # unknown values fail before any output
    # so does a sampler of the other objective, or too many steps
    sampler(args.sampler or default_sampler(meta["diffusion"]), meta["diffusion"], args.steps, bundle_scheduler(meta))
    with claim_output_folder(out, "generate"):  # locked: a second generate into the same folder is refused
        _refuse_earlier_volumes(out)  # one that finished while this one loaded its model
        return _generate_into(args, events, out, model, meta, condition, device)


def _refuse_earlier_volumes(out: Path) -> None:
    if out.is_dir() and any(out.glob("*.nii.gz")):
        raise InputError(f"{out} already holds generated volumes.", "Choose an empty or new --out folder.")


def _generate_into(args, events, out: Path, model, meta: dict, condition, device) -> int:
    from CTDiffusionLib import paired_generation
    from CTDiffusionLib.runtime import autocast_dtype

    if is_paired_ct(meta):  # a paired run: CT + label pairs in the nnU-Net layout
        return paired_generation.generate_paired_from_args(args, events, out, model, meta, device)
    sampler_name = args.sampler or default_sampler(meta["diffusion"])
    events.set_log_path(out / EVENTS)
    events.emit("start", command="generate", model=meta["_folder"], num=args.num, sampler=sampler_name,
                steps=args.steps or DEFAULT_SAMPLER_STEPS[sampler_name], out=str(out), device=str(device))
    t0 = time.time()
    paths = generate(model, meta, args.num, out, sampler_name=sampler_name, steps=args.steps, seed=args.seed,
                     batch_size=args.batch_size, reference=args.reference, condition=condition,
                     guidance_scale=args.guidance_scale, device=device, autocast_dtype=autocast_dtype(device, None),
                     events=events)
    seconds = time.time() - t0
    events.emit("done", status="completed", outputs=[str(p) for p in paths], seconds=seconds,
                seconds_per_volume=seconds / len(paths))
    log.info("wrote %d volumes to %s (%.1f s per volume)", len(paths), out, seconds / len(paths))
    return 0
