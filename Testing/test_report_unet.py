"""`report2d`: the mask report's network (issue 29 item 6), pinned against the report's description and the
annotated-diffusion blog it followed, not against its own code; its Smooth L1 loss; and a train -> bundle -> generate
round trip."""

import json
import math

import pytest
import torch
from torch import nn

from CTDiffusionLib.models.factory import build_model
from CTDiffusionLib.models.report_unet import ConvNextBlock, LinearAttention, ReportUNet, SelfAttention
from CTDiffusionLib.presets import PRESETS
from conftest import run_cli

PRESET = PRESETS["cardiac-masks"]["report2d"]
HIDDEN = 4 * 32  # heads 4 x dim_head 32: the width of q, k and v in both attentions


def convnext_parameters(c_in, c_out, time_dim, mult=2):
    """One ConvNeXt block as described: time MLP Linear(time_dim -> c_in) (none in the final block), depthwise 7x7
    with bias, norm(c_in), 3x3 conv c_in -> mult c_out, norm(mult c_out), 3x3 conv -> c_out, 1x1 residual conv when
    the width changes. Each norm (LayerNorm over channels, or GroupNorm(1)) has a gain and a bias per channel."""
    hidden = mult * c_out
    return ((time_dim * c_in + c_in if time_dim else 0) + (49 * c_in + c_in) + 2 * c_in
            + (9 * c_in * hidden + hidden) + 2 * hidden + (9 * hidden * c_out + c_out)
            + (c_in * c_out + c_out if c_in != c_out else 0))


def linear_attention_parameters(c):
    """Pre-norm (2c), q/k/v 1x1 conv without bias (c -> 3 x 128), output 1x1 conv (128 -> c, bias), norm (2c)."""
    return 2 * c + 3 * HIDDEN * c + (HIDDEN * c + c) + 2 * c


def attention_parameters(c):
    """Pre-norm (2c), q/k/v 1x1 conv without bias, output 1x1 conv with bias; no norm after it."""
    return 2 * c + 3 * HIDDEN * c + (HIDDEN * c + c)


def described_parameters(dim, mults, channels, init_dim):
    """The whole network, level by level, from the description (not from models/report_unet.py)."""
    t = 4 * dim
    widths = [dim * m for m in mults]
    ins = [init_dim, *widths[:-1]]
    total = (dim * t + t) + (t * t + t)  # sinusoidal features (no weights) -> Linear -> GELU -> Linear
    total += 49 * channels * init_dim + init_dim  # 7x7 input conv
    for c_in, c in zip(ins, widths):  # down: 2 ConvNeXt, linear attention, max-pool (no weights)
        total += convnext_parameters(c_in, c, t) + convnext_parameters(c, c, t) + linear_attention_parameters(c)
    total += 2 * convnext_parameters(widths[-1], widths[-1], t) + attention_parameters(widths[-1])  # middle
    for k in reversed(range(len(widths))):  # up: concat skip, 2 ConvNeXt, linear attention, 2x2 transposed conv
        c = ins[k]
        total += convnext_parameters(2 * widths[k], c, t) + convnext_parameters(c, c, t)
        total += linear_attention_parameters(c)
        total += (4 * c * c + c) if k > 0 else 0
    return total + convnext_parameters(init_dim, dim, None) + (dim * channels + channels)  # final block, 1x1 out


def test_preset_is_the_report_setting():
    assert PRESET["grid"] == [64, 64] and PRESET["mode"] == "2d"
    assert (PRESET["schedule"], PRESET["prediction"], PRESET["objective"]) == ("cosine", "epsilon", "ddpm")
    tr = PRESET["training"]
    assert (tr["batch_size"], tr["lr"], tr["loss"], tr["ema_decay"]) == (16, 1e-4, "smooth_l1", 0.0)
    kw = PRESET["model"]["kwargs"]
    assert (kw["dim"], kw["dim_mults"], kw["convnext_mult"], kw["heads"], kw["dim_head"]) == (64, [1, 2, 4], 2, 4, 32)


def test_parameter_count_matches_the_description():
    model = build_model(PRESET["model"])
    counted = sum(p.numel() for p in model.parameters())
    # 4 one-hot channels (background, RV, MYO, LV), dim 64, init_dim 64 // 3 * 2 = 42 (the blog's default)
    assert described_parameters(64, (1, 2, 4), 4, 42) == 14_569_506
    assert counted == 14_569_506
    # and for another width and channel count, so the formula and the network agree beyond one setting
    other = ReportUNet(in_channels=1, out_channels=1, dim=32, dim_mults=(1, 2, 4))
    assert sum(p.numel() for p in other.parameters()) == described_parameters(32, (1, 2, 4), 1, 32 // 3 * 2)


@pytest.mark.parametrize("dim", [64, 32])
def test_structure_matches_the_description(dim):
    model = ReportUNet(in_channels=4, out_channels=4, dim=dim, dim_mults=(1, 2, 4))
    assert len(model.down) == 3 and len(model.up) == 3
    for level in [*model.down, *model.up]:
        assert sum(isinstance(m, ConvNextBlock) for m in level.values()) == 2  # two ConvNeXt blocks per level
        assert isinstance(level["attention"], LinearAttention)
    assert isinstance(model.mid["attention"], SelfAttention)
    assert [level["block2"].net[-1].out_channels for level in model.down] == [dim, 2 * dim, 4 * dim]
    down = [level["resample"] for level in model.down]
    assert all(isinstance(m, nn.MaxPool2d) and m.kernel_size == 2 for m in down[:2])
    assert isinstance(down[2], nn.Identity)
    up = [level["resample"] for level in model.up]
    assert all(isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (2, 2) and m.stride == (2, 2) for m in up[:2])
    assert isinstance(up[2], nn.Identity)
    block = model.down[1]["block1"]  # ConvNeXt: depthwise 7x7, then an MLP twice as wide as its output
    assert block.depthwise.kernel_size == (7, 7) and block.depthwise.groups == block.depthwise.in_channels
    assert block.net[1].out_channels == 2 * block.net[-1].out_channels
    assert model.final_block.time_mlp is None and model.mid["block1"].time_mlp is not None


def test_output_keeps_the_shape_and_time_features_are_sinusoidal():
    model = ReportUNet(in_channels=4, out_channels=4, dim=64).eval()
    seen = {}
    model.time_mlp.register_forward_pre_hook(lambda m, args: seen.setdefault("features", args[0]))
    t = torch.tensor([7, 640])
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        assert model(x, t).shape == x.shape
    half = 32
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))  # the blog's frequencies
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    assert torch.allclose(seen["features"], expected, atol=1e-5)


def _heads(layer, x):
    b, _, h, w = x.shape
    qkv = layer.to_qkv(layer.norm(x)).reshape(b, 3 * HIDDEN, h * w)
    return [part.reshape(b, 4, 32, h * w) for part in qkv.split(HIDDEN, dim=1)]  # channel = head * 32 + d


def test_linear_attention_normalises_q_over_channels_and_k_over_positions():
    torch.manual_seed(0)
    layer, x = LinearAttention(8), torch.randn(2, 8, 5, 6)
    q, k, v = _heads(layer, x)
    q, k = q.softmax(dim=2) / math.sqrt(32), k.softmax(dim=3)
    out = torch.zeros_like(q)
    for d in range(32):  # out[e, n] = sum_d (sum_m k[d, m] v[e, m]) q[d, n]
        out += (k[:, :, d:d + 1] * v).sum(-1, keepdim=True) * q[:, :, d:d + 1]
    expected = x + layer.to_out(out.reshape(2, HIDDEN, 5, 6))
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_middle_attention_is_full_softmax_attention():
    torch.manual_seed(0)
    layer, x = SelfAttention(8), torch.randn(2, 8, 4, 4)
    q, k, v = _heads(layer, x)
    weights = torch.softmax(q.transpose(2, 3) @ k / math.sqrt(32), dim=-1)  # (positions x positions) per head
    expected = x + layer.to_out((weights @ v.transpose(2, 3)).transpose(2, 3).reshape(2, HIDDEN, 4, 4))
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_smooth_l1_loss_and_the_mse_default():
    from CTDiffusionLib.diffusion.loss import diffusion_loss
    from CTDiffusionLib.diffusion.schedulers import default_diffusion_config, training_scheduler, training_target
    from CTDiffusionLib.errors import InputError

    sched = training_scheduler(default_diffusion_config("cosine", "epsilon"))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(2, 4, 8, 8, generator=g) * 2 - 1, torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    model = lambda x, t: x * 3.0  # noqa: E731  errors above 1, where Huber and MSE differ
    error = sched.add_noise(x0, noise, t) * 3.0 - training_target(sched, x0, noise, t)
    huber = torch.where(error.abs() < 1, 0.5 * error ** 2, error.abs() - 0.5).mean()
    assert torch.allclose(diffusion_loss(model, sched, x0, noise, t, loss="smooth_l1"), huber)
    assert torch.allclose(diffusion_loss(model, sched, x0, noise, t), (error ** 2).mean())
    assert not torch.allclose(huber, (error ** 2).mean())
    with pytest.raises(InputError, match="huber"):
        diffusion_loss(model, sched, x0, noise, t, loss="huber")


def test_train_bundle_generate_round_trip(mask_phantoms, tmp_path):
    """report2d at a 16x16 grid override: 2 steps, a bundle that records the network and the loss, 2 slices."""
    from CTDiffusionLib.models.bundle import load_bundle

    run = tmp_path / "run"
    assert run_cli("train", "--profile", "cardiac-masks", "--preset", "report2d", "--data", mask_phantoms, "--out",
                   run, "--grid", "16x16", "--steps", 2, "--batch-size", 2, "--checkpoint-every", 2,
                   "--sample-every", 0) == 0
    meta = json.loads((run / "model" / "model.json").read_text(encoding="utf-8"))
    assert meta["model"]["type"] == "report_unet" and meta["training"]["loss"] == "smooth_l1"
    assert meta["diffusion"]["prediction"] == "epsilon" and meta["diffusion"]["beta_schedule"] == "cosine"
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["training"]["loss"] == "smooth_l1"
    model, _ = load_bundle(run / "model")
    assert isinstance(model, ReportUNet)
    out = tmp_path / "generated"
    assert run_cli("generate", "--model", run, "--num", 2, "--out", out, "--steps", 2, "--seed", 0) == 0
    assert len([p for p in out.iterdir() if p.name.endswith(".nii.gz")]) == 2


def test_other_presets_keep_their_bundles_as_they_were(tiny_mask_run):
    """No "loss" key in a bundle unless the preset asks for another loss: bundles without it are MSE models. The
    run's config.json records the loss it trained with, as it records every training default."""
    meta = json.loads((tiny_mask_run / "model" / "model.json").read_text(encoding="utf-8"))
    assert "loss" not in meta["training"] and json.loads(
        (tiny_mask_run / "config.json").read_text(encoding="utf-8"))["training"].get("loss", "mse") == "mse"
