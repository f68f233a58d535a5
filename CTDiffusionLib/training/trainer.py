"""The training loop: AdamW + warmup/cosine, EMA, bf16 on CUDA, validation, previews, atomic checkpoints, exact
resume, clean stop on SIGINT/SIGTERM, and an error (not a saved model) when the loss stops being finite.

Every random draw of a step (batch order, augmentation, noise, timesteps, condition dropout) is a pure function of
(seed, step), so a resumed run replays exactly what an uninterrupted one would have done. With torchrun the batch
is the global batch: every rank draws it identically and trains on its own slice, so the averaged gradient equals
the single-process one and a checkpoint resumes on any number of GPUs.
"""

from __future__ import annotations

import contextlib
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
from CTDiffusionLib.errors import InputError, Interrupted
from CTDiffusionLib.stopping import StopFlag
from CTDiffusionLib.label_sets import stage_profile
from CTDiffusionLib.models.bundle import save_bundle
from CTDiffusionLib.models.conditioning import ConditionVocabulary
from CTDiffusionLib.models.factory import build_model, count_parameters
from CTDiffusionLib.memory import check_training_memory
from CTDiffusionLib.models.speed import apply_speed_settings
from CTDiffusionLib.output_folder import claim_output_folder
from CTDiffusionLib.requests import TrainRequest
from CTDiffusionLib.runfolder import RunFolder, write_json
from CTDiffusionLib.runtime import (Distributed, autocast_dtype, init_distributed, resolve_device,
                                    run_on_main_then_share, wait_for_main)
from CTDiffusionLib.training.budget import TimeBudget
from CTDiffusionLib.training.checkpoints import save_checkpoint
from CTDiffusionLib.threads import ThreadGovernor
from CTDiffusionLib.training.cost import coarse_data_notice, long_run_notice
from CTDiffusionLib.training.config import TrainingConfig, build_config
from CTDiffusionLib.training.crash_recovery import clean_up_after_earlier_jobs
from CTDiffusionLib.training.lr_schedule import warmup_flat_cosine
from CTDiffusionLib.training.progress import SYNC_EVERY, TrainingProgress
from CTDiffusionLib.training.resume import continue_from_checkpoint, open_run_folder, resumed_config
from CTDiffusionLib.training.resume_checks import (check_data_unchanged, check_resume_arguments,
                                                   check_same_kind_of_run)
from CTDiffusionLib.training.prefetch import Prefetcher
from CTDiffusionLib.training.run_length import RunLength

log = logging.getLogger("ctdiffusion")
VAL_SAMPLES_MAX = 64
MAX_VALIDATIONS = 50  # validation points per run at most (the loss curve needs no more)


# StopFlag (signals or the stop-request file) is shared by every job: CTDiffusionLib/stopping.py


# ---------------------------------------------------------------- data
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
        self.length = RunLength(config["training"], len(self.train_idx))  # steps, learning-rate plan, budget
        self.per_epoch = self.length.per_epoch
        self._plan_validation()
        torch.manual_seed(self.seed)
        self.model = build_model(config["model"], vocab.num_embeddings if vocab else None).to(device)
        apply_speed_settings(self.model, device, config["data"]["mode"], grad_checkpoint=tr.grad_checkpoint,
                             attention=tr.attention, channels_last=tr.channels_last)
        self.ema = AveragedModel(self.model, multi_avg_fn=warmup_ema_update(tr.ema_decay), use_buffers=True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay)
        self.lr_schedule = warmup_flat_cosine(self.optimizer, lambda: self.length.plan)
        self.noise_schedule = training_scheduler(config["diffusion"])
        self.loss = check_loss(tr.loss)
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
        self.clock = time.monotonic  # budget and speed; a clock step (NTP) must not move the deadline
        self.budget: TimeBudget | None = None  # a --minutes run's, while fit() runs

    # -- length
    @property
    def total(self) -> int:
        """The run's last step (OPEN_LENGTH while a --minutes budget measures the speed)."""
        return self.length.total

    @property
    def planned_total(self) -> int | None:
        """The run's last step; None while a --minutes budget has not fixed it yet."""
        return self.length.planned_total

    def _plan_validation(self) -> None:
        # Validate at the end of every k-th epoch, at most MAX_VALIDATIONS times a run: with few cases an epoch is a
        # handful of steps, and validating after each one would add a forward pass over the held-out set every few
        # steps. An open budget plans with the preset's step count until the real length is known.
        steps = self.length.steps_total if self.length.open else self.total
        self.validate_every_epochs = max(1, math.ceil(steps / self.per_epoch / MAX_VALIDATIONS))

    def change_length(self, total: int, progress: TrainingProgress | None = None) -> None:
        """The time budget's new length from the current step on (fixed once the speed is measured, re-planned,
        or cut at the deadline): the learning-rate plan follows without a jump, config.json records it."""
        opening = self.length.open
        note = self.budget.last if self.budget is not None and self.dist.is_main else None
        self.length.change(self.step, total, note)
        self._plan_validation()
        if not self.dist.is_main:
            return
        write_json(self.run.config, self.config)
        if progress is not None:
            progress.plan_changed(note)
        minutes, rate = f"{self.length.minutes:g}", (note or {}).get("it_per_s")
        if opening:
            log.info("time budget: %d steps fit in %s min%s; the learning rate decays from step %d to %d",
                     self.total, minutes, f" at {rate:.2f} it/s" if rate else "", self.step, self.total)
        elif note is not None and note["reason"] == "replanned":
            log.info("time budget re-planned at step %d (%s min, %.1f s left, %.2f it/s since the last plan): the "
                     "run ends at step %d instead of %d, the rest of the learning-rate decay re-scaled to it",
                     self.step, minutes, note["seconds_left"], rate or 0.0, self.total, note["previous_total"])
        else:
            log.info("time budget of %s min reached: the run ends at step %d", minutes, self.total)

    def replace_budget_with_steps(self) -> None:
        """--resume --steps/--epochs on a --minutes run: the budget ends here, the run at that count."""
        self.length.replace_with_steps(self.step)
        self._plan_validation()

    # -- state
    def state_dict(self) -> dict:
        state = {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
                 "config_preset": self.config["preset"]}
        if self.length.minutes is not None:  # the plan in force and the budget left (training/run_length.py)
            budget = self.budget.state(self.clock()) if self.budget is not None else self.length.budget_state
            state["length"] = self.length.record(budget)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step = int(state["step"])
        if self.length.minutes is not None and "length" in state:
            self.length.adopt(state["length"])
            self._plan_validation()

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
        if self.cost_said or not rate or self.length.open or not self.dist.is_main:
            return
        if self.length.minutes is not None:  # the user chose how long it takes
            return
        self.cost_said = True
        notice = long_run_notice(1.0 / rate, self.total - self.step, self.device.type,
                                 psutil.Process().memory_info().rss, self.config.get("preset", "?"))
        if notice:
            log.warning("%s %s", *notice)
            self.events.emit("warning", message=notice[0], hint=notice[1])

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

    def _agree(self) -> tuple[bool, int | None]:
        """(stop?, new length or None): whether any rank got SIGINT/SIGTERM, and rank 0's time budget's answer.
        Under DDP that takes an all-reduce (a host sync), so the ranks ask together every SYNC_EVERY steps rather
        than every step."""
        def proposal() -> int | None:
            return self.budget.propose(self.step, self.total, self.clock()) if self.budget is not None else None

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

    def _outlook(self, rate: float | None) -> tuple[int | None, float | None]:
        """(total, ETA in s) for progress: while a budget is open, where it would end at the speed so far and the
        time left in it."""
        if self.length.open and self.budget is not None:
            now = self.clock()
            return self.budget.estimated_total(self.step, now), self.budget.left(now)
        return self.total, (self.total - self.step) / max(rate or 0.0, 1e-9)

    def _on_sync(self, rate: float | None) -> None:
        """At each loss read-back: the cost notice from the first measured speed, the CPU thread count."""
        self.say_cost(rate)
        self.threads.tick()

    def fit(self) -> dict:
        """Train from the current step to the run's end. Each step draws its batch and takes the loss, the backward
        pass, the optimiser step and the EMA update (train_step); validation, a checkpoint and a preview follow
        when due. A stop request (SIGINT/SIGTERM, the stop-request file) ends it with a checkpoint."""
        self.clock = time.monotonic  # looked up here: the tests' step clock replaces this module's `time`
        self.budget = self.length.time_budget(self.clock(), self.step)
        progress = TrainingProgress(self.events, step=self.step, per_epoch=self.per_epoch, speaks=self.dist.is_main,
                                    clock=self.clock, lr=lambda: self.lr_schedule.get_last_lr()[0],
                                    outlook=self._outlook, on_sync=self._on_sync)
        with self._running():
            while self.step < self.total:
                self._stop_or_change_length(progress)
                loss = self.train_step()
                checkpoint_due = self.step % self.training.checkpoint_every == 0 or self.step == self.total
                progress.step_done(self.step, self.total, loss, sync=checkpoint_due)
                self._validate_save_preview(checkpoint_due, progress)
        return progress.summary(self.step)

    @contextlib.contextmanager
    def _running(self):
        """While fit() runs: stop requests are caught, and on a GPU the next batches are prepared meanwhile."""
        self.stop.install()
        # Only where the step runs on a GPU: on a CPU the worker thread competes with torch's own threads for the
        # same cores (measured on the 2-core demo: 1.64-1.87 steps/s with it, 2.25 without).
        self.prefetch = Prefetcher(self.step_inputs) if self.device.type == "cuda" else None
        try:
            yield
        finally:
            if self.prefetch is not None:
                self.prefetch.close()
            self.prefetch = None
            self.stop.restore()

    def _stop_or_change_length(self, progress: TrainingProgress) -> None:
        """Before a step, what the ranks agree on: a stop (checkpoint, then Interrupted) or the budget's new length."""
        stop, length = self._agree()
        if length is not None:
            self.change_length(length, progress)
        if stop:
            progress.flush()
            if self.dist.is_main:
                self.save()
            raise Interrupted(f"Training stopped at step {self.step}; a checkpoint was written.",
                              "Run the same command with --resume to continue.")

    def _validate_save_preview(self, checkpoint_due: bool, progress: TrainingProgress) -> None:
        """After a step: validation at the planned epoch ends, the checkpoint, a preview. Rank 0 does them; every
        rank waits for it at the same steps."""
        tr, epoch = self.training, self.step // self.per_epoch
        preview = bool(tr.sample_every) and self.step % tr.sample_every == 0
        validate = self.step % self.per_epoch == 0 and (epoch % self.validate_every_epochs == 0
                                                        or self.step == self.total)
        if self.dist.is_main:
            if validate:
                progress.validated(self.step, self.planned_total, self.validation_loss())
            if checkpoint_due:
                self.save()
            if preview:
                self.preview()
        if validate or checkpoint_due or preview:
            wait_for_main(self.dist)


def _barrier(dist: Distributed) -> None:
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier()


def train_from_args(args: TrainRequest, events) -> int:
    """`ctdiffusion train`: the request (requests.TrainRequest, checked where it was made) into a run folder."""
    out = Path(args.out)
    dist = init_distributed(args.device)
    if not dist.is_main:
        return _train(args, events, out, dist)
    # only into a new, empty or marked folder (output_folder.py); one training per run folder, kill -9 releases it
    with claim_output_folder(out, "train", create=not args.resume):
        return _train(args, events, out, dist)


def _train(args, events, out: Path, dist: Distributed) -> int:
    """One `train` job: take over --out, build the run's config (new or resumed), check it fits, train, say done."""
    if not dist.is_main:
        events.to_stdout = False  # one event stream per job: rank 0 speaks for all ranks (stdout and events.jsonl)
    elif out.is_dir():
        clean_up_after_earlier_jobs(out)  # we hold the folder's lock
    stored = open_run_folder(out, args.resume)
    _barrier(dist)  # every rank has checked --out before rank 0 creates anything in it
    config, budget_replaced = _run_config(args, stored, out)
    device = _training_device(args, config, dist)
    run = RunFolder(out)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        events.set_log_path(run.events)
    if config.get("labels"):
        from CTDiffusionLib.training.paired import train_pair_models

        trainer, result = train_pair_models(args, config, out, device, events, dist, budget_replaced)
    else:
        trainer, result = _train_one_model(args, config, out, device, events, dist, budget_replaced)
    events.emit("done", status="completed", step=trainer.step, total=trainer.total, run_dir=str(out),
                bundle=str(run.model), **result)
    if dist.enabled:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    return 0


def _run_config(args, stored: dict | None, out: Path) -> tuple[dict, bool]:
    """A new run's config from the request, or the stored one with what a resume may change; and whether a step
    count given on --resume replaces the run's time budget."""
    if stored is not None:
        check_same_kind_of_run(stored, args, out)
        check_resume_arguments(stored, args)  # a different --batch-size, --grid, --data ... is refused, not ignored
        return resumed_config(stored, args)
    if not args.data:
        raise InputError("--data is required for a new run.", "Give a folder, files or a .txt list of files.")
    config = build_config(args, [str(Path(s).resolve()) for s in args.data])
    if args.with_labels:
        from CTDiffusionLib.training.paired import paired_config

        config = paired_config(config, args.structures)
    return config, False


def _training_device(args, config: dict, dist: Distributed) -> torch.device:
    """This rank's device, once the global batch divides over the ranks and the training fits its memory."""
    if dist.enabled and config["training"]["batch_size"] % dist.world_size:
        raise InputError(f"--batch-size {config['training']['batch_size']} is the global batch and must divide "
                         f"evenly over the {dist.world_size} processes.",
                         f"Use a multiple of {dist.world_size} (each process trains on its share).")
    device = resolve_device(args.device, dist.local_rank)
    check_training_memory(config, device, dist.world_size)  # "needs N GB, this machine has M", nothing allocated
    return device


def _train_one_model(args, config: dict, out: Path, device, events, dist: Distributed,
                     budget_replaced: bool) -> tuple[Trainer, dict]:
    """An unpaired run: its cases (a resumed run says which changed since it started), prepared once, trained."""
    cases, vocab = load_cases(config)
    if args.resume and dist.is_main:
        for change in check_data_unchanged(out, cases, config, args.accept_changed_data):
            log.warning("--accept-changed-data: the run continues with its data changed: %s", change)
    cache = RunFolder(out).cache
    # rank 0 fills the preprocessing cache first, the other ranks then read it (no write race); if rank 0 fails,
    # every rank ends with its error instead of waiting at a barrier
    data = run_on_main_then_share(dist, lambda: prepare_dataset(cases, config["profile"], config["data"], cache,
                                                                config["training"]["seed"],
                                                                intensity=config["intensity"]),
                                  "Preprocessing the training data")
    return fit_stage(config, out, data, vocab, device, events, dist, args.resume, budget_replaced)


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
    resumed_from = continue_from_checkpoint(trainer, run, events, budget_replaced) if resume else None
    config["training"]["total_steps"], config["training"]["steps_per_epoch"] = trainer.planned_total, trainer.per_epoch
    if dist.is_main:
        write_json(run.config, config)
        write_json(run.dataset, {**data.stats, "split": {
            k: [data.cases[i].case_id for i in v] for k, v in data.split.items()}, "split_summary": split_line,
            "warnings": split_warnings, "geometry": data.geometry,
            "conditions": vocab.to_dict() if vocab else {}})
    parameters = count_parameters(trainer.model)
    events.emit("start", command="train", run_dir=str(out), profile=config["profile"], preset=config["preset"],
                step=trainer.step, total=trainer.planned_total, minutes=trainer.length.minutes,
                steps_per_epoch=trainer.per_epoch, device=str(device),
                world_size=dist.world_size, parameters=parameters,
                train_samples=len(trainer.train_idx), val_samples=len(trainer.val_idx),
                resumed_from=str(resumed_from) if resumed_from else None, split=split_line, warnings=split_warnings)
    if dist.is_main:  # one voice under torchrun, as for events
        length = (f"{trainer.length.minutes:g} minutes" if trainer.length.open else
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
