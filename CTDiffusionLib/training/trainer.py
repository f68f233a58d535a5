"""The training loop: AdamW + warmup/cosine, EMA, bf16 on CUDA, validation, previews, atomic checkpoints, exact
resume, clean stop on SIGINT/SIGTERM, and an error (not a saved model) when the loss stops being finite.

Every random draw of a step (batch order, augmentation, noise, timesteps, condition dropout) is a pure function of
(seed, step), so a resumed run replays exactly what an uninterrupted one would have done. With torchrun the batch
is the global batch: every rank draws it identically and trains on its own slice, so the averaged gradient equals
the single-process one and a checkpoint resumes on any number of GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.optim.swa_utils import AveragedModel

from CTDiffusionLib.data.dataset import PreparedData, make_batch, prepare_dataset, split_summary
from CTDiffusionLib.data.paired_dataset import conditioned_sample
from CTDiffusionLib.data.discovery import apply_condition_csv, discover_cases
from CTDiffusionLib.data.preprocess import ORIENTATION
from CTDiffusionLib.diffusion.loss import check_loss, diffusion_loss
from CTDiffusionLib.diffusion.schedulers import (draw_training_timesteps, preview_sampler, scheduler_config,
                                                 training_scheduler)
from CTDiffusionLib.errors import InputError, Interrupted, TrainingFailed
from CTDiffusionLib.stopping import StopFlag
from CTDiffusionLib.label_sets import stage_profile
from CTDiffusionLib.models.bundle import bundle_is_current, save_bundle
from CTDiffusionLib.models.conditioning import ConditionVocabulary
from CTDiffusionLib.models.factory import build_model, count_parameters
from CTDiffusionLib.memory import check_training_memory
from CTDiffusionLib.models.speed import apply_speed_settings
from CTDiffusionLib.output_folder import OUTPUT_MARKER, claim_output_folder
from CTDiffusionLib.runfolder import INPUT, RunFolder, read_config, write_json
from CTDiffusionLib.runtime import (Distributed, autocast_dtype, init_distributed, resolve_device,
                                    run_on_main_then_share, wait_for_main)
from CTDiffusionLib.textformat import format_eta
from CTDiffusionLib.training.budget import TimeBudget
from CTDiffusionLib.training.checkpoints import load_latest, save_checkpoint
from CTDiffusionLib.threads import ThreadGovernor
from CTDiffusionLib.training.cost import coarse_data_notice, long_run_notice
from CTDiffusionLib.training.config import TrainingConfig, build_config, total_steps
from CTDiffusionLib.training.crash_recovery import (LOCK_NAME, checkpoint_logged, remove_temp_files,
                                                   trim_events_after)
from CTDiffusionLib.training.lr_schedule import warmup_flat_cosine
from CTDiffusionLib.training.resume_checks import check_data_unchanged, check_resume_arguments
from CTDiffusionLib.training.prefetch import Prefetcher

log = logging.getLogger("ctdiffusion")
VAL_SAMPLES_MAX = 64
MAX_VALIDATIONS = 50  # validation points per run at most (the loss curve needs no more)
SYNC_EVERY = 10  # steps between host syncs (loss read-back, the DDP stop vote) when nothing else forces one


# StopFlag (signals or the stop-request file) is shared by every job: CTDiffusionLib/stopping.py


# ---------------------------------------------------------------- run folder
def open_run_folder(out: Path, resume: bool) -> dict | None:
    """Checks --out against --resume; returns the stored config when resuming."""
    run = RunFolder(out)
    if resume:
        if not run.is_run():
            raise InputError(f"--resume: {out} holds no run ({run.config.name} is missing).",
                             "Point --out at an existing run folder, or drop --resume to start a new run.")
        return read_config(out)
    if run.is_run():
        raise InputError(f"{out} already holds a training run.",
                         "Add --resume to continue it, or choose a new --out folder.")
    # input/: data the Slicer module exported; a run killed before its config.json was written leaves only the
    # lock, events and cache behind, and a new run may start over them. Under torchrun the other ranks look while
    # rank 0 is claiming the folder, so the marker may still be under its temporary name.
    ours = (INPUT, LOCK_NAME, OUTPUT_MARKER, run.events.name, run.cache.name, run.stop_request.name)
    if out.exists() and any(p.name not in ours and not p.name.startswith(OUTPUT_MARKER) for p in out.iterdir()):
        raise InputError(f"{out} is not empty and is not a CTDiffusion run folder.", "Choose a new --out folder.")
    return None


def load_cases(config: dict):
    data_cfg = config["data"]
    cases = discover_cases(data_cfg["sources"], config["profile"])
    cond = data_cfg.get("conditions")
    if isinstance(cond, str):  # CSV file
        cases = apply_condition_csv(cases, cond)
        keys = sorted({k for c in cases for k in c.conditions})
    else:
        keys = cond or []
    vocab = ConditionVocabulary.from_conditions(keys, [dict(c.conditions) for c in cases]) if keys else None
    return cases, vocab


# ---------------------------------------------------------------- per-step randomness
def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, stream])


def step_batch_indices(train_idx: list[int], batch_size: int, seed: int, step: int, per_epoch: int) -> list[int]:
    epoch, pos = divmod(step, per_epoch)
    perm = step_rng(seed, epoch, 0).permutation(len(train_idx))
    chosen = [perm[(pos * batch_size + k) % len(perm)] for k in range(batch_size)]
    return [train_idx[i] for i in chosen]


def condition_labels(vocab: ConditionVocabulary | None, data: PreparedData, indices, drop: float,
                     rng: np.random.Generator) -> torch.Tensor | None:
    """Class indices; with prob `drop` all conditions are dropped, else each key independently with prob drop/2."""
    if not vocab:
        return None
    labels = []
    for i in indices:
        cond = dict(data.cases[data.sample_case[i]].conditions)
        if rng.random() < drop:
            cond = {}
        else:
            cond = {k: v for k, v in cond.items() if k in vocab.vocab and rng.random() >= drop / 2}
        labels.append(vocab.encode(cond))
    return torch.tensor(labels, dtype=torch.long)


# ---------------------------------------------------------------- trainer
def warmup_ema_update(decay: float):
    """EMA with warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after n updates, so early weights fade out fast
    (a fixed 0.999 would still hold 61% of the step-1 weights at step 500, and previews/bundles use the EMA)."""

    @torch.no_grad()
    def update(ema_params, model_params, num_averaged) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(float(decay), (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, model_params, weight)
        else:  # integer buffers (counters) simply follow the model
            for ema, current in zip(ema_params, model_params):
                ema.copy_(current)

    return update


class Trainer:
    def __init__(self, config: dict, run_dir: Path, data: PreparedData, vocab: ConditionVocabulary | None,
                 device: torch.device, events, dist: Distributed = Distributed()):
        self.config, self.run_dir, self.data, self.vocab = config, run_dir, data, vocab
        self.device, self.events, self.dist = device, events, dist
        self.run = RunFolder(run_dir)
        tr = self.training = TrainingConfig.from_dict(config["training"])
        self.seed = int(tr.seed)
        self.profile = stage_profile(config)  # a paired run's label model sees its samples as label maps
        self.train_idx = data.sample_indices("train")
        self.val_idx = data.sample_indices("val")[:VAL_SAMPLES_MAX]
        self.total, self.per_epoch = total_steps(tr, len(self.train_idx))
        self._plan_validation()
        torch.manual_seed(self.seed)
        self.model = build_model(config["model"], vocab.num_embeddings if vocab else None).to(device)
        apply_speed_settings(self.model, device, config["data"]["mode"], grad_checkpoint=tr.grad_checkpoint,
                             attention=tr.attention, channels_last=tr.channels_last)
        self.ema = AveragedModel(self.model, multi_avg_fn=warmup_ema_update(tr.ema_decay), use_buffers=True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay)
        # a --minutes run's warm-up is capped when its length is fixed (set_length), and recorded then
        self.warmup = tr.warmup_steps if tr.minutes is not None else min(tr.warmup_steps, self.total // 4)
        self.lr_schedule = warmup_flat_cosine(self.optimizer,
                                              lambda: (self.warmup, self.training.lr_decay_from, self.total))
        self.noise_schedule = training_scheduler(config["diffusion"])
        self.loss = check_loss(config["training"].get("loss", "mse"))  # diffusion/loss.py LOSSES; older runs: mse
        self.amp_dtype = autocast_dtype(device, tr.amp)
        self.step = 0
        self.forward = self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda"
                                                   else None)
        if tr.compile:
            self.forward = torch.compile(self.forward)
        self.stop = StopFlag(RunFolder(run_dir).stop_request)
        self.prefetch: Prefetcher | None = None  # set while fit() runs
        self.threads = ThreadGovernor(device)  # CPU threads follow the cores other work leaves free
        self.cost_said = False

    # -- length
    @property
    def planned_total(self) -> int | None:
        """The run's last step; None while a --minutes budget has not fixed it yet."""
        return None if self.training.budget_open else self.total

    def _plan_validation(self) -> None:
        # Validate at the end of every k-th epoch, at most MAX_VALIDATIONS times a run: with few cases an epoch is a
        # handful of steps, and validating after each one would add a forward pass over the held-out set every few
        # steps. An open budget plans with the preset's step count until the real length is known.
        steps = self.training.steps if self.training.budget_open else self.total
        self.validate_every_epochs = max(1, math.ceil(steps / self.per_epoch / MAX_VALIDATIONS))

    def set_length(self, total: int, rate: float | None = None) -> None:
        """Fix (or, at the deadline, shorten) the length of a --minutes run at the current step, and record it in
        config.json so that a resumed run continues the same learning-rate schedule."""
        opening = self.training.budget_open
        self.total = int(total)
        if opening:
            self.start_decay_here()
            # a warm-up longer than a quarter of the run would never reach the decay: end it by then (or now)
            self.warmup = min(self.warmup, max(self.step, self.total // 4))
        self._plan_validation()
        self.config["training"].update(steps=self.total, total_steps=self.total, warmup_steps=self.warmup)
        if not self.dist.is_main:
            return
        write_json(self.run.config, self.config)
        minutes = self.training.minutes
        if opening:
            log.info("time budget: %d steps fit in %s min%s; the learning rate decays from step %d to %d",
                     self.total, f"{minutes:g}", f" at {rate:.2f} it/s" if rate else "", self.step, self.total)
        else:
            log.info("time budget of %s min reached: the run ends at step %d", f"{minutes:g}", self.total)

    def start_decay_here(self) -> None:
        """The cosine decay starts at the current step (the length of a --minutes run became known)."""
        self.training = dataclasses.replace(self.training, lr_decay_from=self.step)
        self.config["training"]["lr_decay_from"] = self.step

    # -- state
    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
                "config_preset": self.config["preset"]}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step = int(state["step"])

    def bundle_meta(self) -> dict:
        c = self.config
        return {"profile": self.profile.name, "preset": c["preset"], "model": c["model"], "diffusion": c["diffusion"],
                "scheduler": scheduler_config(c["diffusion"]), "intensity": dict(c["intensity"]),
                "orientation": ORIENTATION,
                "data": {"grid": c["data"]["grid"], "mode": c["data"]["mode"]},
                "geometry": self.data.geometry, "conditions": self.vocab.to_dict() if self.vocab else {},
                "training": {"step": self.step, "total_steps": self.planned_total,
                             **({"loss": self.loss} if self.loss != "mse" else {})},
                **({"labels": c["labels"]} if c.get("labels") else {})}  # a paired run's structures

    def save(self) -> Path:
        path = save_checkpoint(self.run.checkpoints, self.step, self.state_dict(), self.training.keep_checkpoints)
        save_bundle(self.run.model, self.ema.module.state_dict(), self.bundle_meta())
        self.events.emit("checkpoint", path=str(path), step=self.step, bundle=str(self.run.model))
        return path

    # -- one step
    def _local_positions(self, batch_size: int) -> range:
        """Which positions of the global batch this rank trains on (all of them without DDP)."""
        per_rank = batch_size // self.dist.world_size
        return range(self.dist.rank * per_rank, (self.dist.rank + 1) * per_rank)

    def step_inputs(self, step: int) -> dict:
        """This rank's (x0, noise, t, labels) of `step`, on the CPU: a pure function of (seed, step).

        Each sample of the global batch draws its augmentation and noise from its own stream, keyed by its position
        in the global batch, so a rank augments only its own slice and still gets exactly the values a single
        process would (tests compare the two)."""
        tr = self.training
        bs = tr.batch_size
        indices = step_batch_indices(self.train_idx, bs, self.seed, step, self.per_epoch)
        local = self._local_positions(bs)
        augment = self.config["data"]["augment"] or None
        condition = None
        if self.data.label_maps is not None:  # a paired run's CT model: each CT with its (maybe dropped) label map
            pairs = [conditioned_sample(self.data, indices[k], self.profile, augment,
                                        step_rng(self.seed, step, 100 + k), tr.cond_drop,
                                        step_rng(self.seed, step, 300 + k)) for k in local]
            x0, condition = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        else:
            x0 = torch.cat([make_batch(self.data, [indices[k]], self.profile, augment,
                                       step_rng(self.seed, step, 100 + k)) for k in local])
        noise = torch.cat([torch.randn((1, *x0.shape[1:]), generator=torch.Generator("cpu").manual_seed(
            int(step_rng(self.seed, step, 200 + k).integers(2**62)))) for k in local])
        g = torch.Generator("cpu").manual_seed(int(step_rng(self.seed, step, 2).integers(2**62)))
        t = draw_training_timesteps(self.noise_schedule, bs, g)[list(local)]
        labels = condition_labels(self.vocab, self.data, indices, tr.cond_drop, step_rng(self.seed, step, 3))
        batch = {"x0": x0, "noise": noise, "t": t, "labels": labels[list(local)] if labels is not None else None,
                 "condition": condition}
        if self.device.type == "cuda":  # page-locked, so the copy to the GPU can overlap the step
            batch = {k: v.pin_memory() if v is not None else None for k, v in batch.items()}
        return batch

    def train_step(self) -> torch.Tensor:
        """One optimisation step; returns the loss as a device tensor (no host sync: fit() reads it in bulk)."""
        tr = self.training
        batch = self.prefetch.get(self.step) if self.prefetch is not None else self.step_inputs(self.step)
        x0, noise, t, labels, condition = (
            v.to(self.device, non_blocking=True) if v is not None else None
            for v in (batch["x0"], batch["noise"], batch["t"], batch["labels"], batch.get("condition")))
        self.model.train()
        loss = diffusion_loss(self.forward, self.noise_schedule, x0, noise, t, labels, self.amp_dtype,
                              min_snr_gamma=self.config["diffusion"].get("min_snr_gamma"), spatial_condition=condition,
                              loss=self.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), tr.grad_clip)
        self.optimizer.step()
        self.lr_schedule.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        return loss.detach()

    def say_cost(self, rate: float) -> None:
        """Once, from the first measured speed: a notice when this CPU run will take hours (training/cost.py)."""
        if self.cost_said or not rate or self.training.budget_open or not self.dist.is_main:
            return
        self.cost_said = True
        notice = long_run_notice(1.0 / rate, self.total - self.step, self.device.type,
                                 psutil.Process().memory_info().rss, self.config.get("preset", "?"))
        if notice:
            log.warning("%s %s", *notice)
            self.events.emit("warning", message=notice[0], hint=notice[1])

    def check_losses(self, losses: list[torch.Tensor], first_step: int) -> list[float]:
        """Losses of steps first_step+1.. as floats (one host sync); a non-finite one stops the run."""
        if not losses:
            return []
        values = torch.stack(losses).float().cpu().tolist()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise TrainingFailed(
                    f"The training loss became {value} at step {first_step + i + 1}; stopping instead of saving a "
                    "broken model.", "Lower --lr (e.g. by 10x) and --resume from the last checkpoint, or check the "
                    "data for extreme values.")
        return values

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Loss on held-out samples with fixed noise and evenly spread timesteps: comparable across epochs."""
        if not self.val_idx:
            return None
        self.model.eval()
        g = torch.Generator("cpu").manual_seed(self.seed + 7919)
        n_t = self.noise_schedule.config.num_train_timesteps
        total, count = 0.0, 0
        bs = self.training.batch_size
        for start in range(0, len(self.val_idx), bs):
            chunk = self.val_idx[start:start + bs]
            condition = None
            if self.data.label_maps is not None:
                pairs = [conditioned_sample(self.data, i, self.profile, None, None) for i in chunk]
                x0, condition = (torch.cat(p).to(self.device) for p in zip(*pairs))
            else:
                x0 = make_batch(self.data, chunk, self.profile, None, None).to(self.device)
            noise = torch.randn(x0.shape, generator=g).to(self.device)
            t = torch.tensor([(start + k) * n_t // len(self.val_idx) for k in range(len(chunk))], device=self.device)
            labels = None
            if self.vocab:
                labels = torch.tensor([self.vocab.encode(dict(self.data.cases[self.data.sample_case[i]].conditions))
                                       for i in chunk], device=self.device)
            loss = diffusion_loss(self.model, self.noise_schedule, x0, noise, t, labels, self.amp_dtype, "sum",
                                  spatial_condition=condition, loss=self.loss)
            total += loss.item() / x0[0].numel()
            count += len(chunk)
        return total / count

    def preview(self) -> None:
        from CTDiffusionLib.generation import generate
        from CTDiffusionLib.previews import save_mid_slice_png

        meta = {**self.bundle_meta(), "sha256": None}
        folder = self.run.samples
        if self.data.label_maps is not None:  # a paired CT model: the CT of the first training label maps
            from CTDiffusionLib.paired_generation import preview_ct

            paths = preview_ct(self.ema.module.eval(), meta, [self.data.label_maps[i] for i in self.train_idx[:2]],
                               folder, seed=self.seed, device=self.device, autocast_dtype=self.amp_dtype,
                               prefix=f"step_{self.step:08d}")
        else:
            name, steps = preview_sampler(meta["diffusion"])
            paths = generate(self.ema.module.eval(), meta, 2, folder, sampler_name=name, steps=steps, seed=self.seed,
                             device=self.device, autocast_dtype=self.amp_dtype, prefix=f"step_{self.step:08d}")
        png = save_mid_slice_png(paths[0], paths[0].with_suffix("").with_suffix(".png"), self.profile)
        self.events.emit("sample", path=str(paths[0]), png=str(png), step=self.step)

    def _agree(self, budget: TimeBudget | None) -> tuple[bool, int | None]:
        """(stop?, new length or None): whether any rank got SIGINT/SIGTERM, and rank 0's time budget's answer.
        Under DDP that takes an all-reduce (a host sync), so the ranks ask together every SYNC_EVERY steps rather
        than every step."""
        def proposal() -> int | None:
            return budget.propose(self.step, self.total, time.monotonic()) if budget is not None else None

        if not self.dist.enabled:
            return self.stop.requested, proposal()
        if self.step % SYNC_EVERY:
            return False, None
        import torch.distributed as dist

        mine = proposal() if self.dist.is_main else None
        vote = torch.tensor([1.0 if self.stop.requested else 0.0, float(mine or 0)], dtype=torch.float64,
                            device=self.device)
        dist.all_reduce(vote)  # only rank 0 proposes, so the sum is its proposal
        return bool(vote[0].item() > 0), int(vote[1].item()) or None

    def _outlook(self, budget: TimeBudget | None, rate: float | None) -> tuple[int | None, float | None]:
        """(total, ETA in s) for progress: while a budget is open, where it would end at the speed so far and the
        time left in it."""
        if self.training.budget_open and budget is not None:
            now = time.monotonic()
            return budget.estimated_total(self.step, now), max(0.0, budget.deadline - now)
        return self.total, (self.total - self.step) / max(rate or 0.0, 1e-9)

    def fit(self) -> dict:
        tr = self.training
        self.stop.install()
        main = self.dist.is_main
        t_start, step_start = time.time(), self.step
        last_report, last_log, rate, loss, loss_avg = 0.0, time.time(), None, None, None
        pending, pending_from = [], self.step  # device-side losses not yet read back
        window_t, window_step = time.time(), self.step
        # Only where the step runs on a GPU: on a CPU the worker thread competes with torch's own threads for the
        # same cores (measured on the 2-core demo: 1.64-1.87 steps/s with it, 2.25 without).
        self.prefetch = Prefetcher(self.step_inputs) if self.device.type == "cuda" else None
        # monotonic: a clock step (NTP) must not move the deadline
        budget = TimeBudget(tr.minutes * 60.0, time.monotonic(), self.step) if tr.budget_open else None
        try:
            while self.step < self.total:
                stop, length = self._agree(budget)
                if length is not None:
                    self.set_length(length, budget.rate(self.step, time.monotonic()) if budget else None)
                if stop:
                    self.check_losses(pending, pending_from)
                    if main:
                        self.save()
                    raise Interrupted(f"Training stopped at step {self.step}; a checkpoint was written.",
                                      "Run the same command with --resume to continue.")
                pending.append(self.train_step())
                epoch = self.step // self.per_epoch
                end_of_epoch = self.step % self.per_epoch == 0
                save_now = self.step % tr.checkpoint_every == 0 or self.step == self.total
                report_now = main and (time.time() - last_report > 1.0 or self.step == self.total or end_of_epoch)
                if report_now or save_now or self.step % SYNC_EVERY == 0:  # every rank checks at the same steps
                    values = self.check_losses(pending, pending_from)
                    for value in values:
                        loss_avg = value if loss_avg is None else 0.9 * loss_avg + 0.1 * value
                    loss, pending, pending_from = (values[-1] if values else loss), [], self.step
                    now = time.time()
                    if self.step > window_step:
                        rate = (self.step - window_step) / max(now - window_t, 1e-9)
                        window_t, window_step = now, self.step
                        self.say_cost(rate)
                    self.threads.tick()
                log_now = main and (time.time() - last_log > 15 or self.step == self.total)
                if report_now or log_now:
                    total, eta = self._outlook(budget, rate)
                if report_now:
                    last_report = time.time()
                    self.events.emit("progress", phase="train", step=self.step, total=total, epoch=epoch,
                                     loss=loss, loss_avg=loss_avg, lr=self.lr_schedule.get_last_lr()[0],
                                     it_per_s=rate, eta_s=eta)
                if log_now:
                    last_log = time.time()
                    log.info("step %d/%s (epoch %d)  loss %.4f  %.2f it/s  ETA %s", self.step, total or "?", epoch,
                             loss_avg, rate or 0.0, format_eta(eta))
                preview_now = bool(tr.sample_every) and self.step % tr.sample_every == 0
                validate_now = end_of_epoch and (epoch % self.validate_every_epochs == 0 or self.step == self.total)
                if validate_now and main:
                    val = self.validation_loss()
                    if val is not None:
                        self.events.emit("progress", phase="validate", step=self.step, total=self.planned_total,
                                         epoch=epoch, val_loss=val)
                if main and save_now:
                    self.save()
                if main and preview_now:
                    self.preview()
                if validate_now or save_now or preview_now:  # same steps on every rank
                    wait_for_main(self.dist)
        finally:
            if self.prefetch is not None:
                self.prefetch.close()
            self.prefetch = None
            self.stop.restore()
        elapsed = time.time() - t_start
        return {"steps": self.step - step_start, "seconds": elapsed,
                "it_per_s": (self.step - step_start) / max(elapsed, 1e-9)}


def _barrier(dist: Distributed) -> None:
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier()


def train_from_args(args, events) -> int:
    out = Path(args.out)
    dist = init_distributed(args.device)
    if not dist.is_main:
        return _train(args, events, out, dist)
    # only into a new, empty or marked folder (output_folder.py); one training per run folder, kill -9 releases it
    with claim_output_folder(out, "train", create=not args.resume):
        return _train(args, events, out, dist)


def _train(args, events, out: Path, dist: Distributed) -> int:
    if not dist.is_main:
        events.to_stdout = False  # one event stream per job: rank 0 speaks for all ranks (stdout and events.jsonl)
    elif out.is_dir():
        remove_temp_files(out)  # half-written files of a run that was killed; we hold the folder's lock
        RunFolder(out).stop_request.unlink(missing_ok=True)  # a request left by an earlier job is not for this one
    stored = open_run_folder(out, args.resume)
    _barrier(dist)  # every rank has checked --out before rank 0 creates anything in it
    with_labels = bool(getattr(args, "with_labels", False))
    if getattr(args, "structures", None) and not with_labels:
        raise InputError("--structures chooses the structures of a paired run.", "Add --with-labels, or drop it.")
    budget_replaced = False  # --resume --steps/--epochs on a run whose time budget had not fixed its length
    if stored is None:
        if not args.data:
            raise InputError("--data is required for a new run.", "Give a folder, files or a .txt list of files.")
        sources = [str(Path(s).resolve()) for s in args.data]
        config = build_config(args, sources)
        if with_labels:
            from CTDiffusionLib.training.paired import paired_config

            config = paired_config(config, args.structures)
    else:
        if args.profile and args.profile != stored["profile"]:
            raise InputError(f"--profile {args.profile} differs from the run's profile {stored['profile']}.",
                             "Resume with the run's own profile.")
        if with_labels and not stored.get("labels"):
            raise InputError(f"--with-labels: the run in {out} was trained without label maps.",
                             "Resume it without --with-labels, or start a new run with --with-labels.")
        check_resume_arguments(stored, args)  # a different --batch-size, --grid, --data ... is refused, not ignored
        config, budget_replaced = resumed_config(stored, args)
    if dist.enabled and config["training"]["batch_size"] % dist.world_size:
        raise InputError(f"--batch-size {config['training']['batch_size']} is the global batch and must divide "
                         f"evenly over the {dist.world_size} processes.",
                         f"Use a multiple of {dist.world_size} (each process trains on its share).")
    device = resolve_device(args.device, dist.local_rank)
    check_training_memory(config, device, dist.world_size)  # "needs N GB, this machine has M", nothing allocated
    run = RunFolder(out)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        events.set_log_path(run.events)
    if config.get("labels"):
        from CTDiffusionLib.training.paired import train_pair_models

        trainer, result = train_pair_models(args, config, out, device, events, dist, budget_replaced)
    else:
        cases, vocab = load_cases(config)
        if args.resume and dist.is_main:  # cases removed, added or replaced since the run started are said
            for change in check_data_unchanged(out, cases, config, getattr(args, "accept_changed_data", False)):
                log.warning("--accept-changed-data: the run continues with its data changed: %s", change)
        # rank 0 fills the preprocessing cache first, the other ranks then read it (no write race); if rank 0 fails,
        # every rank ends with its error instead of waiting at a barrier
        data = run_on_main_then_share(dist, lambda: prepare_dataset(cases, config["profile"], config["data"],
                                                                    run.cache, config["training"]["seed"],
                                                                    intensity=config["intensity"]),
                                      "Preprocessing the training data")
        trainer, result = fit_stage(config, out, data, vocab, device, events, dist, args.resume, budget_replaced)
    events.emit("done", status="completed", step=trainer.step, total=trainer.total, run_dir=str(out),
                bundle=str(run.model), **result)
    if dist.enabled:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    return 0


def resumed_config(stored: dict, args) -> tuple[dict, bool]:
    """A stored config.json with what a resume may change (the length: --steps/--epochs, never --minutes);
    returns it and whether a step count replaced an open time budget."""
    config, budget_replaced = stored, False
    training = config["training"]
    open_budget = TrainingConfig.from_dict(training).budget_open
    if getattr(args, "minutes", None) is not None:
        raise InputError("--minutes cannot change the length of a resumed run.",
                         f"Resume without --minutes to measure its {training['minutes']:g}-minute budget again, "
                         "or give --steps N." if open_budget else
                         f"Resume with --steps N instead (this run is set to {training['steps']} steps in its "
                         "config.json).")
    if args.steps or args.epochs:  # resuming may extend (or shorten) the run, nothing else
        training["steps"], training["epochs"] = args.steps or training["steps"], args.epochs
        if open_budget:  # a step count replaces the open budget; the decay starts where the run resumes
            training["lr_decay_from"], budget_replaced = 0, True  # 0 until the resumed step is known
    return config, budget_replaced


def fit_stage(config: dict, out: Path, data: PreparedData, vocab, device, events, dist: Distributed, resume: bool,
              budget_replaced: bool, stop_request: Path | None = None) -> tuple[Trainer, dict]:
    """Train one model of the run folder `out` on prepared data, from its newest checkpoint when resuming; writes
    config.json and dataset.json, emits `start`. `stop_request`: the file that asks it to stop (default: out's)."""
    run = RunFolder(out)
    split_line, split_warnings = split_summary(data)  # refuses a split with nothing to train on
    coarse = coarse_data_notice([tuple(c["size"][:2]) for c in data.stats.get("cases", [])], config["data"]["grid"])
    split_warnings = [*split_warnings, " ".join(coarse)] if coarse else split_warnings
    if dist.is_main:
        log.info(split_line)
        for warning in split_warnings:
            log.warning(warning)
    trainer = Trainer(config, out, data, vocab, device, events, dist)
    if stop_request is not None:
        trainer.stop = StopFlag(stop_request)
    resumed_from = None
    if resume:
        latest = load_latest(run.checkpoints)
        if latest:
            resumed_from, state = latest
            trainer.load_state_dict(state)
        if budget_replaced:
            trainer.start_decay_here()
        if dist.is_main:  # a crash (kill -9, full disk) may have left events past the checkpoint and a bundle
            trim_events_after(run.events, trainer.step)  # newer or older than it: continue cleanly
            if trainer.step and not bundle_is_current(run.model, trainer.step):
                save_bundle(run.model, trainer.ema.module.state_dict(), trainer.bundle_meta())
            if resumed_from and not checkpoint_logged(run.events, trainer.step):
                events.emit("checkpoint", path=str(resumed_from), step=trainer.step, bundle=str(run.model))
    config["training"]["total_steps"], config["training"]["steps_per_epoch"] = trainer.planned_total, trainer.per_epoch
    if dist.is_main:
        write_json(run.config, config)
        write_json(run.dataset, {**data.stats, "split": {
            k: [data.cases[i].case_id for i in v] for k, v in data.split.items()}, "split_summary": split_line,
            "warnings": split_warnings, "geometry": data.geometry,
            "conditions": vocab.to_dict() if vocab else {}})
    parameters = count_parameters(trainer.model)
    events.emit("start", command="train", run_dir=str(out), profile=config["profile"], preset=config["preset"],
                step=trainer.step, total=trainer.planned_total, minutes=trainer.training.minutes,
                steps_per_epoch=trainer.per_epoch, device=str(device),
                world_size=dist.world_size, parameters=parameters,
                train_samples=len(trainer.train_idx), val_samples=len(trainer.val_idx),
                resumed_from=str(resumed_from) if resumed_from else None, split=split_line, warnings=split_warnings)
    if dist.is_main:  # one voice under torchrun, as for events
        length = (f"{trainer.training.minutes:g} minutes" if trainer.training.budget_open else
                  f"{trainer.total} steps")
        log.info("training %s/%s on %s: %s (%d steps per epoch), %d train / %d val samples, %.2fM parameters",
                 config["profile"], config["preset"], device, length, trainer.per_epoch, len(trainer.train_idx),
                 len(trainer.val_idx), parameters / 1e6)
    if trainer.step >= trainer.total:
        if dist.is_main:
            log.info("nothing to do: the run is already at step %d of %d", trainer.step, trainer.total)
            if not run.bundle.exists():
                trainer.save()
    return trainer, trainer.fit()
