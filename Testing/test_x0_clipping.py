"""Every sampler clips its x0 estimate to the data range [-1, 1], so all of them agree on a model that overshoots."""

import pytest
import torch

from CTDiffusionLib.diffusion.sampling import sample
from CTDiffusionLib.diffusion.schedulers import default_diffusion_config, sampler, training_scheduler


class OvershootingModel(torch.nn.Module):
    """Stand-in network whose x0 estimate is always `x0` (values up to +-3), returned as the velocity v."""

    def __init__(self, x0: torch.Tensor, cfg: dict):
        super().__init__()
        self.x0 = x0
        self.alphas_cumprod = training_scheduler(cfg).alphas_cumprod

    def forward(self, x, t):
        ab = self.alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1)))
        return (ab.sqrt() * x - self.x0) / (1 - ab).sqrt()  # x0 = sqrt(ab) * x_t - sqrt(1 - ab) * v


@pytest.mark.parametrize("name,steps", [("ddpm", 100), ("ddim", 20), ("dpm++", 20)])
def test_samples_stay_in_range_and_match_the_clipped_estimate(name, steps):
    cfg = default_diffusion_config("linear", "v")
    x0 = torch.linspace(-3.0, 3.0, 2 * 8 * 8).view(2, 8, 8)  # one channel, 2 x 8 x 8 "volume"
    model = OvershootingModel(x0, cfg)
    out = sample(model, sampler(name, cfg, steps), (1, 2, 8, 8), [0, 1], torch.device("cpu"))
    assert out.min() >= -1.0 - 1e-5 and out.max() <= 1.0 + 1e-5, (name, out.min(), out.max())
    # Without clipping x0 the result would be x0 itself (up to 3); with it every sampler lands on clip(x0).
    torch.testing.assert_close(out, x0.clamp(-1, 1).expand_as(out), atol=2e-2, rtol=0)
