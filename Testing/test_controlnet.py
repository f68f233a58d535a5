"""The ControlNet-style label-map branch (models/controlnet.py, `train --with-labels --label-conditioning controlnet`):
it starts as the unconditional UNet, learns to use the label map, and goes through the paired run's whole path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from conftest import run_cli
from CTDiffusionLib.models.controlnet import ControlledUNet
from CTDiffusionLib.presets import PRESETS


def _network(structures: int = 3) -> ControlledUNet:
    kwargs = dict(PRESETS["prostate-ct"]["tiny"]["model"]["kwargs"])
    kwargs.pop("in_channels")
    return ControlledUNet(in_channels=1 + structures, control_channels=structures, **kwargs)


def test_the_branch_adds_nothing_at_first_and_learns_to_read_the_labels():
    torch.manual_seed(0)
    model = _network()
    x, t = torch.randn(2, 4, 8, 32, 32), torch.tensor([10, 700])
    other_labels = torch.cat([x[:, :1], torch.randn(2, 3, 8, 32, 32)], dim=1)
    with torch.no_grad():  # zero-initialised exits: exactly the UNet on the CT channel, whatever the labels
        assert torch.equal(model(x, t), model.unet(x[:, :1], t)) and torch.equal(model(x, t), model(other_labels, t))
    target = torch.randn(2, 1, 8, 32, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):  # zero exits open one layer per step: the output, the decoder, then the branch's exits
        optimizer.zero_grad()
        (model(x, t) - target).square().mean().backward()
        optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(model(x, t), model(other_labels, t))  # now the label map matters


def test_gradient_checkpointing_reaches_both_encoders():
    model = _network()
    model.enable_gradient_checkpointing()
    assert model.unet.gradient_checkpointing and model.branch.gradient_checkpointing
    model.disable_gradient_checkpointing()
    assert not (model.unet.gradient_checkpointing or model.branch.gradient_checkpointing)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    from CTDiffusionLib.data.phantoms import write_phantom_dataset

    return write_phantom_dataset("prostate-ct", 4, tmp_path_factory.mktemp("pairs") / "data", seed=5,
                                 size_xyz=(48, 48, 12), with_labels=True)


def test_a_controlnet_paired_run_trains_and_generates_ct_for_a_label_map(pairs, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--profile", "prostate-ct", "--data", pairs, "--out", run, "--with-labels",
                   "--label-conditioning", "controlnet",
                   "--preset", "tiny", "--steps", 2, "--batch-size", 2, "--sample-every", 0, "--device", "cpu") == 0
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["model"]["type"] == "controlnet_unet"
    structures = len(meta["labels"]["structures"])  # every structure of the phantoms
    assert (meta["model"]["kwargs"]["in_channels"], meta["model"]["kwargs"]["control_channels"]) == (
        1 + structures, structures)
    label_file = sorted((pairs / "labelsTr").glob("*.nii.gz"))[0]
    out = tmp_path / "generated"
    assert run_cli("generate", "--model", run, "--from-labels", label_file, "--out", out, "--sampler", "euler"
                   if meta["diffusion"].get("objective") == "flow" else "ddim", "--steps", 2, "--device", "cpu") == 0
    ct = sitk.ReadImage(str(next((out / "imagesTr").glob("*_0000.nii.gz"))))
    given = sitk.ReadImage(str(label_file))
    assert (ct.GetSize(), ct.GetSpacing(), ct.GetOrigin()) == (given.GetSize(), given.GetSpacing(), given.GetOrigin())


def test_controlnet_is_refused_where_it_means_nothing(pairs, tmp_path, capsys):
    assert run_cli("train", "--profile", "prostate-ct", "--data", pairs, "--out", tmp_path / "a",
                   "--label-conditioning", "controlnet", "--preset", "tiny", "--steps", 1) == 2
    assert "--label-conditioning needs --with-labels" in capsys.readouterr().err
    assert run_cli("train", "--profile", "prostate-ct", "--data", pairs, "--out", tmp_path / "b", "--with-labels",
                   "--label-conditioning", "controlnet", "--preset", "thesis", "--steps", 1) == 2
    assert "needs a preset of CTDiffusion's own network" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
