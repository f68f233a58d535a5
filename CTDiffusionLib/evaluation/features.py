"""Feature network for the Fréchet distance and MMD: works offline, no downloaded weights.

Default: a small 3D convolutional autoencoder trained here, with a fixed seed, for a few hundred fast steps on the
training set (the real set when no training set is given). Its encoder output, average-pooled over space, is the
feature vector. Why an autoencoder: it is trained on exactly this modality and grid, needs no labels, and is cheap
on a CPU; an ImageNet/Inception network would need downloaded weights and 2D RGB inputs.
`--feature-weights FILE.safetensors` loads weights for the same architecture instead (e.g. the
feature_net.safetensors an earlier report wrote), so several reports can share one feature space.

Inputs are resampled to a fixed feature grid (32 x 32 in-plane, at most 8 slices: cheap on a CPU): CT windowed to [-1000, 1000]
-> [0, 1]; masks one-hot (4 channels). 2D-slice masks (z = 1) use (1, 3, 3) kernels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from CTDiffusionLib.errors import InputError

FEATURE_INPLANE = 32  # coarse on purpose: global anatomy and intensity; fine texture/noise have their own metrics
FEATURE_MAX_Z = 8
DEFAULT_STEPS = 200
WIDTHS = (8, 16, 32)


class ConvAutoencoder(nn.Module):
    """3 strided conv layers (in-plane stride 2, z stride 1: slices are thick) to a linear 32-channel bottleneck,
    and a mirrored upsampling decoder. No normalisation layers: they would erase the per-sample statistics the
    pooled features are meant to carry."""

    def __init__(self, in_channels: int, flat_z: bool):
        super().__init__()
        k, pad = ((1, 3, 3), (0, 1, 1)) if flat_z else (3, 1)
        enc, c = [], in_channels
        for n, w in enumerate(WIDTHS):
            enc.append(nn.Conv3d(c, w, k, stride=(1, 2, 2), padding=pad))
            if n < len(WIDTHS) - 1:
                enc.append(nn.GELU())
            c = w
        self.encoder = nn.Sequential(*enc)
        dec = [nn.GELU()]
        for w in list(WIDTHS[-2::-1]) + [WIDTHS[0]]:
            dec += [nn.Upsample(scale_factor=(1, 2, 2), mode="nearest"), nn.Conv3d(c, w, k, padding=pad), nn.GELU()]
            c = w
        dec.append(nn.Conv3d(c, in_channels, 1))
        self.decoder = nn.Sequential(*dec)

    def forward(self, x):
        return self.decoder(self.encoder(x))

    def features(self, x) -> torch.Tensor:
        """Mean and standard deviation of each bottleneck channel over space: (N, 64)."""
        h = self.encoder(x).flatten(2)
        return torch.cat([h.mean(-1), h.std(-1)], dim=1)


def to_feature_input(arrays: list, profile) -> torch.Tensor:
    """(N, C, Zf, 32, 32) float tensor on the feature grid; `profile` is a Profile or its name."""
    from CTDiffusionLib.profiles import get_profile

    profile = get_profile(profile)
    z = arrays[0].shape[0]
    size = (min(z, FEATURE_MAX_Z), FEATURE_INPLANE, FEATURE_INPLANE)
    if profile.is_label_map:
        x = torch.from_numpy(np.stack([a.astype(np.int64) for a in arrays]))
        x = torch.nn.functional.one_hot(x, profile.channels).movedim(-1, 1).float()
    else:
        lo, hi = profile.comparison_window.range
        x = torch.from_numpy(np.stack([np.clip((a - lo) / (hi - lo), 0, 1) for a in arrays]).astype(np.float32))[:, None]
    return torch.nn.functional.interpolate(x, size=size, mode="trilinear", align_corners=False)


def train_autoencoder(x: torch.Tensor, *, steps: int, seed: int, device: str) -> ConvAutoencoder:
    """Reconstruction training with Adam, random batches and flips, fixed seed: the same data give the same net."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = ConvAutoencoder(x.shape[1], flat_z=x.shape[2] == 1).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    batch = min(8, x.shape[0])
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        xb = x[idx]
        if torch.rand(1, generator=gen).item() < 0.5:
            xb = xb.flip(-1)
        xb = xb.to(device)
        loss = torch.nn.functional.mse_loss(net(xb), xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    net.final_loss = float(loss.detach().cpu())
    return net


def save_weights(net: ConvAutoencoder, path: Path, profile_name: str) -> None:
    from safetensors.torch import save

    from CTDiffusionLib.data.volume_io import write_failed
    from CTDiffusionLib.runfolder import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    data = save(state, metadata={"architecture": "CTDiffusion evaluation ConvAutoencoder", "profile": profile_name})
    try:
        atomic_write(path, data)  # a full disk leaves no half file (safetensors' own writer raised its own error)
    except OSError as exc:
        raise write_failed(path, exc.strerror or str(exc)) from None


def load_weights(path, in_channels: int, flat_z: bool, device: str) -> ConvAutoencoder:
    """Weights supplied by the user (safetensors only: no pickle)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--feature-weights {path} does not exist.", "Give a .safetensors file, e.g. the "
                         "feature_net.safetensors written by an earlier `ctdiffusion evaluate`.")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a bad header
        raise InputError(f"--feature-weights {path} is not a readable safetensors file ({exc}).",
                         "Give a .safetensors file written by `ctdiffusion evaluate` (feature_net.safetensors).") from None
    net = ConvAutoencoder(in_channels, flat_z)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        raise InputError(f"--feature-weights {path} does not fit the evaluation feature network for this data "
                         f"({in_channels} input channel(s), {'2D' if flat_z else '3D'}).",
                         "Use feature_net.safetensors from an earlier report of the same profile and mode.") from None
    return net.to(device).eval()


def extract(net: ConvAutoencoder, x: torch.Tensor, device: str, batch: int = 16) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([net.features(x[k:k + batch].to(device)).cpu() for k in range(0, x.shape[0], batch)]).double().numpy()


def build_feature_space(fit_arrays: list, profile, *, weights=None, steps=None, seed=0, device="cpu",
                        save_to: Path | None = None, fit_name: str = "training set"):
    """Returns (feature function arrays -> (N, 64) features, description of the network used); `profile` is a
    Profile or its name."""
    from CTDiffusionLib.profiles import get_profile

    profile = get_profile(profile)
    fit_x = to_feature_input(fit_arrays, profile)
    flat_z = fit_x.shape[2] == 1
    if weights:
        net = load_weights(weights, fit_x.shape[1], flat_z, device)
        desc = (f"user-supplied weights {Path(weights).name} for the evaluation 3D conv autoencoder (64-d pooled "
                "encoder features)")
    else:
        steps = DEFAULT_STEPS if steps is None else steps
        net = train_autoencoder(fit_x, steps=steps, seed=seed, device=device)
        desc = (f"self-trained 3D conv autoencoder (3 strided conv layers; features: mean and std of the 32 "
                f"bottleneck channels, z-scored on the {fit_name}), {steps} "
                f"Adam steps on the {fit_name} ({len(fit_arrays)} samples), seed {seed}, final reconstruction MSE "
                f"{net.final_loss:.4g}")
        if save_to is not None:
            save_weights(net, save_to, profile.name)

    # z-score with the fit set's statistics: one fixed linear map per report, so Fréchet/MMD are in units of
    # the real feature spread rather than of arbitrary activation scales
    fit_f = extract(net, fit_x, device)
    mu, sd = fit_f.mean(0), fit_f.std(0)
    sd = np.maximum(sd, 1e-3 * sd.max() + 1e-12)  # a channel constant on the fit set must not blow up

    def featurize(arrays: list) -> np.ndarray:
        return (extract(net, to_feature_input(arrays, profile), device) - mu) / sd

    return featurize, desc
