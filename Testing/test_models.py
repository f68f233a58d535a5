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
    with torch.device("meta"):  # shape-only for the large presets (thesis is ~170M parameters)
        model = build_model(preset["model"], num_class_embeds=6)
        out = model(torch.empty(shape), torch.zeros(2, dtype=torch.long), class_labels=torch.zeros(2, dtype=torch.long))
    assert tuple(out.shape) == shape


def test_thesis_preset_is_the_source_design():
    spec = PRESETS["prostate-ct"]["thesis"]["model"]["kwargs"]
    assert spec["channels"] == [32, 64, 64, 128, 256, 512, 512]
    assert spec["num_res_blocks"] == 2
    assert spec["attention_levels"] == [False] * 6 + [True]
    assert {"2d", "3d"} == set(spec["level_kinds"])
    assert PRESETS["prostate-ct"]["thesis"]["grid"] == [256, 256, 26]


def test_26_slices_survive_the_default_network_without_padding():
    model = AnisotropicDiffusionUNet(1, 1, (8, 8, 16), ("2d", "3d", "3d"), (2, 2), 1, (False, False, True), 8, 4)
    x = torch.randn(2, 1, 26, 16, 16)
    assert model(x, torch.tensor([1, 2])).shape == x.shape


def test_batch_members_are_independent():
    """The thesis network broke at batch > 1 (time embedding not repeated per slice); here each sample's output
    must equal its output when run alone."""
    torch.manual_seed(0)
    model = build_model(PRESETS["prostate-ct"]["tiny"]["model"]).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    x, t = torch.randn(2, 1, 8, 32, 32), torch.tensor([5, 800])
    with torch.no_grad():
        both = model(x, t)
        single = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(both, single, rtol=1e-4, atol=1e-4)
    assert (both[0] - both[1]).abs().mean() > 1e-4


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    kw = dict(channels=(8, 16), level_kinds=("2d", "3d"), z_strides=(2,), num_res_blocks=1,
              attention_levels=(False, True), head_dim=8, norm_groups=4)
    a, b = AnisotropicDiffusionUNet(**kw), AnisotropicDiffusionUNet(**kw, gradient_checkpointing=True)
    b.load_state_dict(a.state_dict())
    for p in a.parameters():
        p.data.normal_(0, 0.05)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 1, 4, 8, 8), torch.tensor([1, 500])
    a(x, t).square().mean().backward()
    b(x, t).square().mean().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)


def test_fused_and_plain_attention_agree():
    torch.manual_seed(0)
    kw = dict(channels=(8, 16), level_kinds=("2d", "3d"), z_strides=(2,), num_res_blocks=1,
              attention_levels=(False, True), head_dim=8, norm_groups=4)
    a, b = AnisotropicDiffusionUNet(**kw), AnisotropicDiffusionUNet(**kw, fused_attention=False)
    for p in a.parameters():
        p.data.normal_(0, 0.05)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 1, 4, 8, 8), torch.tensor([1, 500])
    torch.testing.assert_close(a(x, t), b(x, t), rtol=1e-4, atol=1e-5)


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
