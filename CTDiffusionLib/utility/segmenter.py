"""The benchmark's one fixed segmentation recipe: a small 3D MONAI UNet trained with Dice + cross-entropy.

Every arm of the benchmark trains exactly this recipe, for the same number of iterations, so the arms differ only in
their training cases. Inputs are CT volumes already on the benchmark's working grid (volumes.py), in HU; the recipe
windows them to [0, 1] (MONAI ScaleIntensityRange), trains on random patches (MONAI RandSpatialCrop) with random
left-right flips when no structure is lateral, and predicts whole volumes by MONAI's sliding-window inference.
Deterministic per seed: weights, batch order and augmentation all come from that seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from CTDiffusionLib.utility.fitting import fit, shuffled_cycle

HU_WINDOW = (-1000.0, 1000.0)  # air .. cortical bone: every structure of a pelvic CT keeps its contrast
MAX_PATCH_ZYX = (16, 96, 96)  # training patch and inference window at most (the whole volume when smaller)
ITERATIONS_PER_CASE = 10  # default length: scaled to the number of real training cases ...
MIN_ITERATIONS, MAX_ITERATIONS = 150, 3000  # ... within these bounds
BATCH_SIZE = 2
LEARNING_RATE = 2e-3
LATERAL_WORDS = ("left", "right", "_l", "_r")  # structure names that make a left-right flip change their meaning


@dataclass(frozen=True)
class Recipe:
    """Everything that defines the segmenter; written to utility.json so the benchmark can be reproduced."""

    network: str = "monai.networks.nets.UNet"
    channels: tuple = (16, 32, 64)
    strides: tuple = ((1, 2, 2), (2, 2, 2))  # z is thin (few thick slices): halve it once, x/y twice
    num_res_units: int = 1
    loss: str = "monai.losses.DiceCELoss(softmax, one-hot labels)"
    optimizer: str = "Adam"
    learning_rate: float = LEARNING_RATE
    batch_size: int = BATCH_SIZE
    hu_window: tuple = HU_WINDOW
    patch_zyx: tuple = MAX_PATCH_ZYX
    iterations: int = 0
    flip_left_right: bool = True

    def describe(self) -> dict:
        return asdict(self)


def default_iterations(n_real_train: int) -> int:
    """The recipe's length for this many real training cases (the same for every arm: fixed compute)."""
    return int(min(MAX_ITERATIONS, max(MIN_ITERATIONS, ITERATIONS_PER_CASE * n_real_train)))


def make_recipe(grid_zyx: tuple, structure_names: list, iterations: int) -> Recipe:
    """The recipe for a working grid: patch = the grid where it fits, else MAX_PATCH_ZYX, rounded to what the
    network's strides divide; no left-right flips when a structure is lateral (femur_left would become the right)."""
    steps = np.prod(np.array(Recipe.strides), axis=0)  # total down-sampling per axis (z, y, x)
    patch = tuple(int(max(s, min(g, m) // s * s)) for g, m, s in zip(grid_zyx, MAX_PATCH_ZYX, steps))
    lateral = any(w in n.lower() for n in structure_names for w in LATERAL_WORDS)
    return Recipe(patch_zyx=patch, iterations=int(iterations), flip_left_right=not lateral)


def build_network(recipe: Recipe, n_classes: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=n_classes, channels=recipe.channels,
                strides=recipe.strides, num_res_units=recipe.num_res_units)


def memory_format(device) -> torch.memory_format:
    """channels-last on the CPU: oneDNN's 3D convolutions then take a demo-scale training iteration from 0.086 to
    0.071 s of CPU time (measured, docs/utility.md "Time"); the GPU keeps PyTorch's default layout."""
    return torch.channels_last_3d if torch.device(device).type == "cpu" else torch.contiguous_format


def window(hu: np.ndarray, recipe: Recipe) -> np.ndarray:
    """HU -> [0, 1] over the recipe's window (MONAI ScaleIntensityRange, clipped): (1, Z, Y, X) float32."""
    from monai.transforms import ScaleIntensityRange

    lo, hi = recipe.hu_window
    scale = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(np.asarray(hu, np.float32)[None]), np.float32)


def _augment(recipe: Recipe, seed: int):
    """Random patch (padded first where the volume is smaller) and, where allowed, a left-right flip."""
    from monai.transforms import Compose, RandFlipd, RandSpatialCropd, SpatialPadd

    keys = ("image", "label")
    steps = [SpatialPadd(keys, recipe.patch_zyx, mode="constant"),
             RandSpatialCropd(keys, recipe.patch_zyx, random_size=False)]
    if recipe.flip_left_right:
        steps.append(RandFlipd(keys, prob=0.5, spatial_axis=2))  # (1, z, y, x): x runs left-right
    return Compose(steps).set_random_state(seed=seed)


def train_segmenter(cases: list, n_classes: int, recipe: Recipe, seed: int, device: str = "cpu",
                    on_step=None) -> torch.nn.Module:
    """Train the recipe on `cases` (objects with .image HU (Z, Y, X) and .labels uint8 0..n_classes-1 on the working
    grid). `on_step(step)` is called after every iteration (progress; it may raise to stop). Returns the model in
    eval mode."""
    from monai.losses import DiceCELoss
    from monai.utils import convert_to_tensor

    if len(cases) == 0:
        raise ValueError("no training cases")
    torch.manual_seed(seed)
    layout = memory_format(device)
    model = build_network(recipe, n_classes).to(device, memory_format=layout)
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    inputs = [{"image": window(c.image, recipe), "label": np.asarray(c.labels, np.int64)[None]} for c in cases]
    augment = _augment(recipe, seed)
    cycle = shuffled_cycle(len(inputs), np.random.default_rng(seed))

    def batch_loss():
        batch = [augment(inputs[next(cycle)]) for _ in range(recipe.batch_size)]
        # plain tensors: MONAI's MetaTensor would add its bookkeeping to every operation of the network (8% of the time)
        image = torch.stack([convert_to_tensor(b["image"], track_meta=False) for b in batch]).float()
        image = image.to(device, memory_format=layout)
        label = torch.stack([convert_to_tensor(b["label"], track_meta=False) for b in batch]).long().to(device)
        return loss_fn(model(image), label)

    return fit(model, optimiser, recipe.iterations, batch_loss, "segmenter", "Check the training pairs' CT values.",
               on_step)


@torch.no_grad()
def predict(model: torch.nn.Module, hu: np.ndarray, recipe: Recipe, device: str = "cpu") -> np.ndarray:
    """Label map (Z, Y, X) uint8 for one CT volume on the working grid: sliding-window softmax, argmax."""
    from monai.inferers import sliding_window_inference

    x = torch.as_tensor(window(hu, recipe))[None].to(device)
    logits = sliding_window_inference(x, recipe.patch_zyx, sw_batch_size=4, predictor=model, overlap=0.25,
                                      mode="gaussian", padding_mode="constant")
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
