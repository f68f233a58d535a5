"""Every preset builds and keeps the grid (large ones on the meta device: shapes only); conditioning vocabulary."""

import pytest
import torch

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.models.aniso_unet import AnisotropicDiffusionUNet
from CTDiffusionLib.models.conditioning import ConditionVocabulary, parse_condition_text
from CTDiffusionLib.models.factory import build_model
from CTDiffusionLib.presets import PRESETS, resolve_preset

ALL = [(profile, name) for profile, presets in PRESETS.items() for name in presets]


def _input_shape(preset, batch=2):
    g, c = preset["grid"], preset["model"]["kwargs"]["in_channels"]
    return (batch, c, g[1], g[0]) if preset.get("mode") == "2d" else (batch, c, g[2], g[1], g[0])


@pytest.mark.parametrize("profile,name", ALL)
def test_preset_output_keeps_the_grid(profile, name):
    preset = PRESETS[profile][name]
    shape = _input_shape(preset)
    with torch.device("meta"):  # shape-only for the large presets (thesis is 275M parameters)
        model = build_model(preset["model"], num_class_embeds=6)
        out = model(torch.empty(shape), torch.zeros(2, dtype=torch.long), class_labels=torch.zeros(2, dtype=torch.long))
    assert tuple(out.shape) == shape


# Parameters per level of the published thesis network (read from its repository), down / up.
THESIS_LEVEL_PARAMETERS = {
    "down0": 146_912, "down1": 185_280, "down2": 570_304, "down3": 706_432, "down4": 8_064_768,
    "down5": 34_223_616, "down6": 28_449_792, "up0": 296_960, "up1": 1_099_648, "up2": 460_864, "up3": 4_804_608,
    "up4": 6_725_632, "up5": 72_048_640, "up6": 72_564_224, "mid": 44_777_984, "time_embedding": 20_736}
# (channels, z, y, x) after each down level's res blocks, for a 26x256x256 input
THESIS_PYRAMID = [(32, 26, 256, 256), (64, 13, 128, 128), (64, 13, 64, 64), (128, 7, 32, 32), (256, 7, 16, 16),
                  (512, 4, 8, 8), (512, 2, 4, 4)]


def test_thesis_preset_is_the_published_network():
    """Same parameter count to the unit, same per-level counts, kinds and feature pyramid (meta device: free)."""
    from torch import nn

    preset = PRESETS["prostate-ct"]["thesis"]
    assert preset["grid"] == [256, 256, 26]
    with torch.device("meta"):
        model = build_model(preset["model"])
        shapes = {}
        for k, level in enumerate(model.down):
            level.resnets[-1].register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(k, tuple(o.shape[1:])))
        out = model(torch.empty(1, 1, 26, 256, 256), torch.zeros(1, dtype=torch.long))
    assert sum(p.numel() for p in model.parameters()) == 275_148_225
    counts = model.level_parameter_counts()
    assert {k: counts[k] for k in THESIS_LEVEL_PARAMETERS} == THESIS_LEVEL_PARAMETERS
    assert [shapes[k] for k in range(7)] == THESIS_PYRAMID and tuple(out.shape) == (1, 1, 26, 256, 256)
    conv_kind = lambda level: "2d" if isinstance(level.resnets[0].conv1, nn.Conv2d) else "3d"  # noqa: E731
    assert [conv_kind(level) for level in model.down] == ["3d", "2d", "3d", "2d", "3d", "3d", "3d"]
    assert [conv_kind(level) for level in reversed(model.up)] == ["3d", "3d", "2d", "3d", "2d", "3d", "3d"]
    assert [level.attentions is not None for level in model.down] == [False] * 5 + [True, False]
    assert len(model.mid.attentions) == 2 and model.mid.attentions[0].heads == 64


def test_thesis_preset_trains_with_the_thesis_recipe():
    from CTDiffusionLib.requests import TrainRequest
    from CTDiffusionLib.training.config import build_config

    config = build_config(TrainRequest(profile="prostate-ct", preset="thesis", data=["x"], out="y"), ["x"])
    tr, diffusion = config["training"], config["diffusion"]
    assert (tr["batch_size"], tr["lr"], tr["warmup_steps"], tr["ema_decay"], tr["amp"]) == (1, 1e-4, 1000, 0.0, "off")
    assert (diffusion["prediction"], diffusion["beta_schedule"], diffusion["num_train_timesteps"]) == (
        "epsilon", "linear", 1000)
    from CTDiffusionLib.diffusion.schedulers import training_scheduler

    assert training_scheduler(diffusion).config.clip_sample


def _small_thesis(**kw):
    from CTDiffusionLib.models.thesis_unet import ThesisUNet

    return ThesisUNet(1, 1, (8, 16, 16), ("3d", "2d", "3d"), (False, True, False), 1, 4, 4, **kw)


def test_thesis_2d_levels_normalise_each_slice_on_its_own():
    """A slice-wise level must not see other slices, not even through GroupNorm statistics: changing one slice
    changes no other slice's output (a volume-wide GroupNorm would change them all)."""
    from CTDiffusionLib.models.thesis_unet import ResnetBlock

    torch.manual_seed(0)
    block = ResnetBlock(8, 8, 16, "2d", 4).eval()
    x, temb = torch.randn(1, 8, 5, 6, 6), torch.randn(1, 16)
    y = x.clone()
    y[:, :, 2] *= 10
    with torch.no_grad():
        a, b = block(x, temb), block(y, temb)
    others = [0, 1, 3, 4]
    torch.testing.assert_close(a[:, :, others], b[:, :, others])
    assert (a[:, :, 2] - b[:, :, 2]).abs().max() > 1e-3


@pytest.mark.parametrize("make", [_small_thesis, lambda: build_model(PRESETS["prostate-ct"]["tiny"]["model"])],
                         ids=["thesis", "aniso"])
def test_batch_members_are_independent(make):
    """The thesis network broke at batch > 1 (time embedding not repeated per slice); here each sample's output
    must equal its output when run alone."""
    torch.manual_seed(0)
    model = make().eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    x, t = torch.randn(2, 1, 8, 32, 32), torch.tensor([5, 800])
    with torch.no_grad():
        both = model(x, t)
        single = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(both, single, rtol=1e-4, atol=1e-4)
    assert (both[0] - both[1]).abs().mean() > 1e-4


def test_26_slices_survive_the_default_network_without_padding():
    model = AnisotropicDiffusionUNet(1, 1, (8, 8, 16), ("2d", "3d", "3d"), (2, 2), 1, (False, False, True), 8, 4)
    x = torch.randn(2, 1, 26, 16, 16)
    assert model(x, torch.tensor([1, 2])).shape == x.shape


SMALL_ANISO = dict(channels=(8, 16), level_kinds=("2d", "3d"), z_strides=(2,), num_res_blocks=1,
                   attention_levels=(False, True), head_dim=8, norm_groups=4)


@pytest.mark.parametrize("make", [_small_thesis, lambda: AnisotropicDiffusionUNet(**SMALL_ANISO)],
                         ids=["thesis", "aniso"])
def test_gradient_checkpointing_gives_same_gradients(make):
    torch.manual_seed(0)
    a, b = make(), make()
    for p in a.parameters():
        p.data.normal_(0, 0.05)
    b.load_state_dict(a.state_dict())
    b.enable_gradient_checkpointing()
    x, t = torch.randn(2, 1, 4, 8, 8), torch.tensor([1, 500])
    a(x, t).square().mean().backward()
    b(x, t).square().mean().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("make", [_small_thesis, lambda: AnisotropicDiffusionUNet(**SMALL_ANISO)],
                         ids=["thesis", "aniso"])
def test_channels_last_gives_the_same_output(make):
    """What CUDA training switches on: NDHWC / NHWC weights (the thesis net has 2D convolutions too)."""
    torch.manual_seed(0)
    a, b = make(), make()
    for p in a.parameters():
        p.data.normal_(0, 0.05)
    b.load_state_dict(a.state_dict())
    b.enable_channels_last()
    assert any(p.dim() == 5 and p.is_contiguous(memory_format=torch.channels_last_3d) for p in b.parameters())
    x, t = torch.randn(2, 1, 4, 8, 8), torch.tensor([1, 500])
    with torch.no_grad():
        torch.testing.assert_close(b(x.contiguous(memory_format=torch.channels_last_3d), t), a(x, t),
                                   rtol=1e-4, atol=1e-5)


def test_narrow_full_size_level_builds_with_32_norm_groups():
    """`default` is 16 channels wide at full size under 32 channels: its first up block sees a 32 + 16 = 48 channel
    concat, which GroupNorm(32) cannot split, so each norm takes the most groups <= 32 that divide its width."""
    model = AnisotropicDiffusionUNet(1, 1, (16, 32), ("2d", "3d"), (2,), 1, (False, False), 8, 32)
    first_up_norm = model.up[-1][0].res.norm1
    assert (first_up_norm.num_channels, first_up_norm.num_groups) == (48, 24)
    assert model.down[0][0].res.norm1.num_groups == 16
    x = torch.randn(2, 1, 6, 8, 8)
    assert model(x, torch.tensor([1, 2])).shape == x.shape


def test_upsample_conv_first_keeps_the_grid_and_differs():
    torch.manual_seed(0)
    a = AnisotropicDiffusionUNet(**SMALL_ANISO)
    b = AnisotropicDiffusionUNet(**SMALL_ANISO, upsample_conv_first=True)
    for p in a.parameters():
        p.data.normal_(0, 0.05)
    b.load_state_dict(a.state_dict())  # same weights: only the order of resize and conv differs
    x, t = torch.randn(2, 1, 5, 8, 8), torch.tensor([1, 500])
    with torch.no_grad():
        ya, yb = a(x, t), b(x, t)
    assert ya.shape == yb.shape == x.shape and (ya - yb).abs().max() > 1e-5


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(InputError, match="tiny"):
        resolve_preset("prostate-ct", "huge")


def test_condition_vocabulary_round_trip_and_errors():
    vocab = ConditionVocabulary({"group": ["NOR", "DCM", "HCM", "MINF", "RV"], "phase": ["ED", "ES"]})
    assert vocab.num_embeddings == 6 * 3
    indices = {vocab.encode({"group": g, "phase": p}) for g in vocab.vocab["group"] for p in ["ED", "ES"]}
    assert len(indices) == 10 and vocab.null_index not in indices
    assert vocab.encode({"group": "DCM"}) != vocab.encode({"group": "DCM", "phase": "ED"})
    with pytest.raises(InputError, match="Known values: DCM, HCM, MINF, NOR, RV"):
        vocab.encode({"group": "XYZ"})
    with pytest.raises(InputError, match="Unknown condition"):
        vocab.encode({"age": "5"})
    assert parse_condition_text("group=DCM, phase=ED") == {"group": "DCM", "phase": "ED"}
    with pytest.raises(InputError):
        parse_condition_text("group:DCM")


def test_default_needs_at_least_3x_fewer_flops_per_training_step_than_thesis():
    """Counted, not timed: forward + backward of one 256x256x26 sample on the meta device (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    def step_flops(name):
        with torch.device("meta"):
            model = build_model(PRESETS["prostate-ct"][name]["model"])
            with FlopCounterMode(display=False) as counter:
                model(torch.empty(1, 1, 26, 256, 256), torch.zeros(1, dtype=torch.long)).square().mean().backward()
        return counter.get_total_flops()

    thesis, default = step_flops("thesis"), step_flops("default")
    assert thesis / default >= 3.0, f"thesis {thesis / 1e12:.2f} vs default {default / 1e12:.2f} TFLOP per step"
