"""The rectified-flow objective and the sampler table: conventions checked against diffusers, samplers that land on
the data with a perfect network, and the objective carried from training through the bundle to `generate`."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from CTDiffusionLib.diffusion.flow import RectifiedFlow
from CTDiffusionLib.diffusion.sampling import sample
from CTDiffusionLib.diffusion.schedulers import (default_diffusion_config, default_sampler, draw_training_timesteps,
                                                 sampler, training_scheduler, training_target)
from CTDiffusionLib.errors import EXIT_BAD_INPUT, InputError
from CTDiffusionLib.samplers import DEFAULT_SAMPLER, SAMPLERS, network_evaluations, sampler_names
from conftest import run_cli

FLOW = default_diffusion_config(objective="flow")
DDPM = default_diffusion_config()


def test_flow_noising_is_the_convention_diffusers_samples():
    """Our forward process must put x_t where diffusers' flow-matching scheduler expects it at each timestep."""
    flow = training_scheduler(FLOW)
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    reference.set_timesteps(7)
    x0, noise = torch.randn(1, 1, 4, 4, 4), torch.randn(1, 1, 4, 4, 4)
    for t in reference.timesteps[:-1]:
        expected = reference.scale_noise(x0, t.reshape(1), noise)
        torch.testing.assert_close(flow.add_noise(x0, noise, t.reshape(1)), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(training_target(flow, x0, noise, torch.tensor([500.0])), noise - x0)


class VelocityOracle(torch.nn.Module):
    """The exact velocity of the straight path through a known x0: v = (x_t - x0) / s."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t):
        s = (t.float() / 1000).view(-1, *([1] * (x.ndim - 1)))
        return (x - self.x0) / s


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_flow_samplers_land_on_the_data_with_a_perfect_network(name):
    """Straight paths are integrated exactly by any solver: a wrong timestep scale or sign would miss x0."""
    x0 = torch.rand(2, 1, 4, 6, 6) * 2 - 1
    out = sample(VelocityOracle(x0), sampler(name, FLOW, 6), (1, 4, 6, 6), [0, 1], torch.device("cpu"))
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


def test_flow_timesteps_are_continuous_and_ddpm_ones_replay_as_before():
    g = lambda: torch.Generator("cpu").manual_seed(11)  # noqa: E731
    flow_t = draw_training_timesteps(training_scheduler(FLOW), 64, g())
    assert flow_t.dtype == torch.float32 and 0 <= flow_t.min() and flow_t.max() < 1000
    assert len(set(flow_t.tolist())) == 64 and not all(v.is_integer() for v in flow_t.tolist())
    ddpm_t = draw_training_timesteps(training_scheduler(DDPM), 64, g())
    assert torch.equal(ddpm_t, torch.randint(0, 1000, (64,), generator=g()))  # old runs resume exactly
    uniform = RectifiedFlow(timestep_sampling="uniform").draw_timesteps(4000, g()) / 1000
    logit = training_scheduler(FLOW).draw_timesteps(4000, g()) / 1000
    # logit-normal concentrates training in the middle of the path
    assert ((logit - 0.5).abs() < 0.25).float().mean() > ((uniform - 0.5).abs() < 0.25).float().mean() + 0.1


def test_every_sampler_counts_its_network_evaluations():
    for name, spec in SAMPLERS.items():
        cfg = FLOW if spec.objective == "flow" else DDPM
        sched = sampler(name, cfg, 5)
        assert network_evaluations(name, 5) == len(sched.timesteps), name
        assert network_evaluations(name, 5, guided=True) == 2 * len(sched.timesteps)
    assert set(sampler_names("flow")) | set(sampler_names("ddpm")) == set(SAMPLERS)


def test_a_sampler_of_the_other_objective_is_refused():
    with pytest.raises(InputError, match="flow objective"):
        sampler("dpm++", FLOW)
    with pytest.raises(InputError, match="ddpm objective"):
        sampler("euler", DDPM)
    assert default_sampler(FLOW) == DEFAULT_SAMPLER["flow"] and default_sampler(DDPM) == DEFAULT_SAMPLER["ddpm"]
    with pytest.raises(InputError, match="min-snr"):
        default_diffusion_config(min_snr_gamma=5, objective="flow")


def test_flow_run_bundle_records_its_objective_and_generate_picks_its_sampler(ct_phantoms, tmp_path, capsys):
    run = tmp_path / "flow"
    assert run_cli("train", "--profile", "prostate-ct", "--data", ct_phantoms, "--out", run, "--preset", "tiny",
                   "--objective", "flow", "--steps", 4, "--batch-size", 2, "--checkpoint-every", 2,
                   "--sample-every", 3) == 0  # a preview on the way: sampled with the flow's own sampler
    assert json.loads((run / "samples" / "step_00000003_0001.json").read_text(encoding="utf-8"))["sampler"] == "euler"
    meta = json.loads((run / "model" / "model.json").read_text(encoding="utf-8"))
    assert meta["diffusion"]["objective"] == "flow" and meta["scheduler"]["prediction_type"] == "flow_prediction"
    assert run_cli("generate", "--model", run, "--num", 2, "--out", tmp_path / "gen", "--steps", 3) == 0
    sidecar = json.loads((tmp_path / "gen" / "synthetic_0001.json").read_text(encoding="utf-8"))
    assert sidecar["sampler"] == "euler" and sidecar["network_evaluations"] == 3
    capsys.readouterr()
    assert run_cli("generate", "--model", run, "--num", 1, "--out", tmp_path / "bad", "--sampler", "dpm++") \
        == EXIT_BAD_INPUT
    assert "trained with the flow objective" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert run_cli("train", "--profile", "prostate-ct", "--data", ct_phantoms, "--out", tmp_path / "r2", "--preset",
                   "tiny", "--objective", "flow", "--prediction", "epsilon", "--steps", 2) == EXIT_BAD_INPUT


def test_ddpm_bundles_keep_their_default_sampler(tiny_ct_run, tmp_path):
    assert run_cli("generate", "--model", tiny_ct_run, "--num", 1, "--out", tmp_path / "g", "--steps", 2) == 0
    sidecar = json.loads((tmp_path / "g" / "synthetic_0001.json").read_text(encoding="utf-8"))
    assert sidecar["sampler"] == DEFAULT_SAMPLER["ddpm"] and sidecar["network_evaluations"] == 2


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_through_the_sampling_loop(name):
    """Each scheduler's step() takes what the loop passes (UniPC and the flow schedulers take no generator)."""
    cfg = FLOW if SAMPLERS[name].objective == "flow" else DDPM
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    out = sample(model, sampler(name, cfg, 3), (1, 2, 4, 4), [0, 1], torch.device("cpu"))
    assert out.shape == (2, 1, 2, 4, 4) and torch.isfinite(out).all()
