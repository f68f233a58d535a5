"""`train --with-labels`: one run, two models, trained one after the other on the same CT + label-map pairs.

    RUN/            the CT model's run folder as for any run (config.json, checkpoints/, model/, events.jsonl, ...);
                    its network takes the noisy CT plus one channel per structure (the label map, one-hot in
                    {-1, +1}; all zeros when dropped during training, so classifier-free guidance can sharpen how
                    closely a generated CT follows its label map)
    RUN/labels/     the label model's own run folder (config.json, checkpoints/, model/, events.jsonl, samples/):
                    a diffusion model of the label maps alone (K + 1 one-hot channels, argmax decode)

The CT model trains first, then the label model. `--steps N` is each model's length; `--minutes M` gives each
model half of M (each half measured and fixed as for any --minutes run). The label model's config.json is written
when the run starts (from the same preset and settings, before the CT model's length is fixed), so `--resume`
finds both and continues whichever is unfinished. One lock (RUN/.lock) and one stop request (RUN/stop-request)
cover both; the data are read and cached once (RUN/cache/).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from CTDiffusionLib.data.paired_dataset import label_model_data, prepare_pairs
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.label_sets import LABEL_RUN, ct_labels_entry, label_model_entry, label_profile
from CTDiffusionLib.profiles import get_profile
from CTDiffusionLib.runfolder import RunFolder, write_json
from CTDiffusionLib.runtime import run_on_main_then_share

log = logging.getLogger("ctdiffusion")


def paired_config(config: dict, structures_spec: str | None) -> dict:
    """A new run's config (build_config's) turned into a paired CT model's: the structures chosen from the data,
    the network's input widened by one channel per structure, half of a --minutes budget."""
    from CTDiffusionLib.data.pairs import discover_pairs, select_structures

    profile = get_profile(config["profile"])
    if profile.is_label_map:
        raise InputError(f"--with-labels needs an intensity profile; {profile.name} data are label maps already.",
                         "Use --profile prostate-ct with CT + label-map pairs.")
    if config["data"].get("conditions"):
        raise InputError("--conditions cannot be combined with --with-labels.",
                         "The label map is a paired run's condition: drop --conditions.")
    if config["data"]["mode"] != "3d":
        raise InputError(f"--with-labels needs a 3D preset; {config['preset']} trains 2D slices.",
                         "Choose a 3D preset.")
    structures = select_structures(discover_pairs(config["data"]["sources"]), structures_spec)
    config = copy.deepcopy(config)
    config["labels"] = ct_labels_entry(structures)
    kwargs = config["model"]["kwargs"]
    kwargs["in_channels"] = kwargs["out_channels"] + len(structures)  # noisy CT + its label map
    if "control_channels" in kwargs:  # --label-conditioning controlnet: the branch reads the label channels
        kwargs["control_channels"] = len(structures)
    if config["training"].get("minutes") is not None:
        config["training"]["minutes"] = config["training"]["minutes"] / 2.0  # the other half: the label model
    return config


def label_model_config(ct_config: dict) -> dict:
    """The label model's config from the CT model's (as it was before training fixed any length)."""
    config = copy.deepcopy(ct_config)
    structures = config["labels"]["structures"]
    config["labels"] = label_model_entry(structures)
    kwargs = config["model"]["kwargs"]
    kwargs["in_channels"] = kwargs["out_channels"] = len(structures) + 1  # background + one per structure
    config["intensity"] = label_profile(get_profile(config["profile"]), structures).intensity_config()
    for key in ("total_steps", "steps_per_epoch"):
        config["training"].pop(key, None)
    return config


def train_pair_models(args, config: dict, out: Path, device, events, dist, budget_replaced: bool):
    """Train (or resume) the CT model, then the label model; returns the label model's trainer and its result
    (the last model trained), as the trainer's `fit_stage` does for one model."""
    from CTDiffusionLib.training.trainer import fit_stage, resumed_config

    if dist.enabled:
        raise InputError("--with-labels runs train in one process.", "Start it without torchrun.")
    run, label_dir = RunFolder(out), out / LABEL_RUN
    label_run = RunFolder(label_dir)
    if label_run.is_run():
        label_config, label_budget_replaced = resumed_config(label_run.read_config(), args)
    else:  # a new run, or one stopped before the label model's config was written
        label_config, label_budget_replaced = label_model_config(config), False
        write_json(label_run.config, label_config)
    from CTDiffusionLib.data.pairs import discover_pairs

    cases = discover_pairs(config["data"]["sources"])
    data = run_on_main_then_share(dist, lambda: prepare_pairs(cases, config["labels"]["structures"],
                                                              get_profile(config["profile"]), config["data"],
                                                              run.cache, config["training"]["seed"],
                                                              config["intensity"]),
                                  "Preprocessing the training pairs")
    log.info("paired run: the CT model (conditioned on %d structures), then the label model",
             len(config["labels"]["structures"]))
    fit_stage(config, out, data, None, device, events, dist, args.resume, budget_replaced)
    log.info("CT model done; training the label model in %s", label_dir)
    events.set_log_path(label_run.events)  # its own step numbers: resume trims each log by its own checkpoint
    try:
        return fit_stage(label_config, label_dir, label_model_data(data), None, device, events, dist,
                         label_run.checkpoints.is_dir(), label_budget_replaced, stop_request=run.stop_request)
    finally:
        events.set_log_path(run.events)
