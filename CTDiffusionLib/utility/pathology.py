"""The cardiac masks' downstream task: which ACDC group (NOR, MINF, DCM, HCM, RV) a mask comes from.

Masks have no image to segment, so the benchmark for them is a small classifier of the pathology group from the
mask itself: MONAI's `Classifier` (a strided convolutional encoder) on the one-hot mask, as the diffusion model sees
it (the profile's crop around the heart, on the generated volumes' grid: 2D slices or 3D stacks). Fixed recipe,
deterministic per seed, the same for every arm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from CTDiffusionLib.data.discovery import ACDC_GROUPS
from CTDiffusionLib.utility.fitting import fit, shuffled_cycle

N_LABELS = 4  # background, RV, MYO, LV
ITERATIONS_PER_SAMPLE = 2
MIN_ITERATIONS, MAX_ITERATIONS = 200, 2000


@dataclass(frozen=True)
class ClassifierRecipe:
    network: str = "monai.networks.nets.Classifier"
    channels: tuple = (16, 32, 64)
    strides: tuple = (2, 2, 2)
    num_res_units: int = 1
    loss: str = "cross-entropy"
    optimizer: str = "Adam"
    learning_rate: float = 1e-3
    batch_size: int = 16
    input: str = "one-hot mask (background, RV, MYO, LV) on the generated grid"
    groups: tuple = ACDC_GROUPS
    iterations: int = 0

    def describe(self) -> dict:
        return asdict(self)


def default_iterations(n_samples: int) -> int:
    return int(min(MAX_ITERATIONS, max(MIN_ITERATIONS, ITERATIONS_PER_SAMPLE * n_samples)))


def _one_hot(arrays: list) -> torch.Tensor:
    """(N, 4, spatial...) float: a 2D slice stored as (1, H, W) becomes (4, H, W)."""
    x = torch.as_tensor(np.stack([a[0] if a.shape[0] == 1 else a for a in arrays]).astype(np.int64))
    return torch.nn.functional.one_hot(x, N_LABELS).movedim(-1, 1).float()


def build_classifier(recipe: ClassifierRecipe, spatial_shape: tuple) -> torch.nn.Module:
    from monai.networks.nets import Classifier

    return Classifier(in_shape=(N_LABELS, *spatial_shape), classes=len(recipe.groups), channels=recipe.channels,
                      strides=recipe.strides, num_res_units=recipe.num_res_units)


def train_classifier(arrays: list, groups: list, recipe: ClassifierRecipe, seed: int, device: str = "cpu",
                     on_step=None) -> torch.nn.Module:
    """arrays: uint8 masks on one grid; groups: their ACDC group names. Returns the model in eval mode."""
    torch.manual_seed(seed)
    x = _one_hot(arrays)
    y = torch.as_tensor([recipe.groups.index(g) for g in groups])
    model = build_classifier(recipe, tuple(x.shape[2:])).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    cycle = shuffled_cycle(len(arrays), np.random.default_rng(seed))

    def batch_loss():
        batch = [next(cycle) for _ in range(min(recipe.batch_size, len(arrays)))]
        return torch.nn.functional.cross_entropy(model(x[batch].to(device)), y[batch].to(device))

    return fit(model, optimiser, recipe.iterations, batch_loss, "pathology classifier",
               "Check the masks' label values.", on_step)


@torch.no_grad()
def predict_groups(model: torch.nn.Module, arrays: list, recipe: ClassifierRecipe, device: str = "cpu") -> list:
    x = _one_hot(arrays)
    out = []
    for k in range(0, len(x), 64):
        out += model(x[k:k + 64].to(device)).argmax(dim=1).cpu().tolist()
    return [recipe.groups[i] for i in out]
