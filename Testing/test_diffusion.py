"""Schedules against their closed forms; training targets; sampler determinism by seed."""

import math

import numpy as np
import pytest
import torch

from CTDiffusionLib.diffusion.sampling import initial_noise, sample
from CTDiffusionLib.diffusion.schedulers import default_diffusion_config, sampler, training_scheduler, training_target
from CTDiffusionLib.errors import InputError
from CTDiffusionLib.models.factory import build_model
from CTDiffusionLib.presets import PRESETS


def test_linear_schedule_matches_closed_form():
    s = training_scheduler(default_diffusion_config("linear"))
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-4)


def test_cosine_schedule_matches_closed_form():
    """Nichol & Dhariwal: alpha_bar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2), s = 0.008, betas capped at 0.999."""
    s = training_scheduler(default_diffusion_config("cosine"))
    T = 1000
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-4, atol=1e-7)
    assert s.alphas_cumprod[-1] < 1e-4 < s.alphas_cumprod[0]


def test_v_prediction_target():
    s = training_scheduler(default_diffusion_config("linear", "v"))
    x0, eps = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    t = torch.tensor([10, 900])
    ab = s.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    expected = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(training_target(s, x0, eps, t), expected, rtol=1e-5, atol=1e-5)
    eps_sched = training_scheduler(default_diffusion_config("linear", "epsilon"))
    assert torch.equal(training_target(eps_sched, x0, eps, t), eps)


@pytest.mark.parametrize("name,steps", [("ddpm", 1000), ("ddim", 50), ("dpm++", 25)])
def test_samplers_default_steps(name, steps):
    assert len(sampler(name, default_diffusion_config()).timesteps) == steps


def test_too_many_steps_is_an_input_error():
    with pytest.raises(InputError, match="exceeds"):
        sampler("ddim", default_diffusion_config(), 5000)


def test_initial_noise_depends_only_on_each_seed():
    a, _ = initial_noise((1, 4, 4), [3, 4])
    b, _ = initial_noise((1, 4, 4), [4])
    torch.testing.assert_close(a[1], b[0])
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_sampling_is_reproducible_by_seed(name):
    torch.manual_seed(0)
    model = build_model(PRESETS["cardiac-masks"]["tiny2d"]["model"]).eval()
    for p in model.parameters():  # non-zero output layer so the network really acts
        p.data.normal_(0, 0.02)
    cfg = default_diffusion_config()
    run = lambda seeds: sample(model, sampler(name, cfg, 4), (4, 32, 32), seeds, torch.device("cpu"))  # noqa
    first, again, other = run([1, 2]), run([1, 2]), run([5, 6])
    torch.testing.assert_close(first, again)
    assert (first - other).abs().mean() > 1e-3


def test_bundle_keeps_its_scheduler_settings_when_the_code_defaults_change(monkeypatch):
    """model.json stores the diffusers scheduler's own config; bundles without it sample with the legacy settings."""
    import json

    from diffusers import DDPMScheduler

    from CTDiffusionLib.diffusion import schedulers

    cfg = default_diffusion_config("cosine", "v")
    stored = json.loads(json.dumps(schedulers.scheduler_config(cfg)))  # what model.json holds
    assert stored["clip_sample"] is True and stored["timestep_spacing"] == "trailing"
    assert stored["prediction_type"] == "v_prediction" and stored["beta_schedule"] == "squaredcos_cap_v2"

    today = schedulers.training_scheduler
    monkeypatch.setattr(schedulers, "training_scheduler", lambda c: DDPMScheduler.from_config(
        today(c).config, clip_sample=False, timestep_spacing="leading", thresholding=False))  # a later code version
    for meta in ({"diffusion": cfg, "scheduler": stored}, {"diffusion": cfg}):  # new bundle, then an old one
        base = schedulers.bundle_scheduler(meta)
        assert base.config.clip_sample is True and base.config.timestep_spacing == "trailing"
        # today's bundles store x0 thresholding (DPM-Solver++ clips like DDPM); bundles from before had none
        assert base.config.thresholding is ("scheduler" in meta) and base.config.prediction_type == "v_prediction"
        ddim = sampler("ddim", cfg, 10, base=base)
        assert ddim.config.clip_sample is True and int(ddim.timesteps[0]) == 999  # trailing: starts at pure noise
    assert schedulers.bundle_scheduler({"diffusion": cfg, "scheduler": {**stored, "clip_sample": False}}
                                       ).config.clip_sample is False  # the stored value wins over any default


def test_diffusion_loss_is_the_mse_to_the_training_target():
    from CTDiffusionLib.diffusion.loss import diffusion_loss

    sched = training_scheduler(default_diffusion_config("linear", "v"))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, torch.randn(2, 1, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    model = lambda x, t: x * 0.5  # noqa: E731  any deterministic network
    target = training_target(sched, x0, noise, t)
    expected = ((sched.add_noise(x0, noise, t) * 0.5 - target) ** 2)
    assert torch.allclose(diffusion_loss(model, sched, x0, noise, t), expected.mean())
    assert torch.allclose(diffusion_loss(model, sched, x0, noise, t, reduction="sum"), expected.sum())
    seen = {}
    diffusion_loss(lambda x, t, class_labels: seen.setdefault("labels", class_labels) is None or x, sched, x0, noise,
                   t, labels=torch.tensor([1, 2]))
    assert seen["labels"].tolist() == [1, 2]


@pytest.mark.parametrize("prediction", ["v", "epsilon"])
def test_min_snr_weighting_caps_the_nearly_clean_timesteps(prediction):
    from CTDiffusionLib.diffusion.loss import diffusion_loss, min_snr_weight

    sched = training_scheduler(default_diffusion_config("linear", prediction, min_snr_gamma=5))
    t = torch.tensor([0, 50, 500, 999])
    alpha_bar = sched.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    weight = min_snr_weight(sched, t, 5.0)
    plain = snr / (snr + 1) if prediction == "v" else torch.ones_like(snr)  # weight when SNR <= gamma
    assert snr[0] > 5 > snr[-1]
    assert torch.allclose(weight[snr <= 5], plain[snr <= 5].float())
    assert torch.all(weight[snr > 5] < plain[snr > 5]) and torch.all(weight <= 1)

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.randn(4, 1, 8, 8, generator=g)
    model = lambda x, t: x * 0.5  # noqa: E731
    per_sample = ((sched.add_noise(x0, noise, t) * 0.5 - training_target(sched, x0, noise, t)) ** 2).mean((1, 2, 3))
    assert torch.allclose(diffusion_loss(model, sched, x0, noise, t, min_snr_gamma=5.0), (weight * per_sample).mean())
    assert "min_snr_gamma" not in default_diffusion_config("linear", prediction)
