"""Speed switches every denoiser offers as methods (like diffusers' `enable_gradient_checkpointing()`).

None of them changes the weights, so none is stored in the model spec or the bundle: the trainer and the
generator switch them on for the device at hand. torch.compile is nn.Module's own `model.compile()`.
"""

from __future__ import annotations

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch.utils.checkpoint import checkpoint

from CTDiffusionLib.models.attention import ATTENTION_BACKENDS


class SpeedSwitches:
    gradient_checkpointing = False

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block's activations in the backward pass: much less memory, ~30% more compute."""
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False

    def enable_channels_last(self) -> None:
        """Channels-last weights (cuDNN's fastest kernels on CUDA): NDHWC for 3D convolutions and NHWC for the 2D
        ones of slice-wise levels (`Module.to(memory_format=channels_last_3d)` would reject those). Inputs should be
        channels_last_3d too; folding a slice-wise level's depth into the batch then stays a view."""
        for param in self.parameters():
            if param.dim() in (4, 5):
                fmt = torch.channels_last_3d if param.dim() == 5 else torch.channels_last
                param.data = param.data.contiguous(memory_format=fmt)

    def set_attention_backend(self, backend: str) -> None:
        """'auto' (fused SDPA, PyTorch chooses), 'flash' / 'efficient' / 'math' (forced), or 'plain' (baseline)."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, not {backend!r}")
        for module in self.modules():
            if hasattr(module, "backend"):
                module.backend = backend

    def run_block(self, block, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    @staticmethod
    def timestep_features(timesteps: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
        """Sinusoidal features [cos | sin] (diffusers' flip_sin_to_cos=True, shift 0)."""
        return get_timestep_embedding(timesteps, dim).to(dtype=dtype)


def apply_speed_settings(model: torch.nn.Module, device: torch.device, mode: str, *, grad_checkpoint: bool = False,
                         attention: str = "auto", channels_last: bool = True) -> torch.nn.Module:
    """Switch on what the run asks for (gradient checkpointing, attention kernel) and channels-last 3D on CUDA.

    Networks without these methods (MONAI's 2D UNet for masks) only take channels-last; asking them for
    gradient checkpointing is an input error rather than a silent no-op."""
    from CTDiffusionLib.errors import InputError

    switches = isinstance(model, SpeedSwitches)
    if grad_checkpoint:
        if not switches:
            raise InputError("--grad-checkpoint: this preset's network does not support gradient checkpointing.",
                             "Drop --grad-checkpoint or choose a 3D preset.")
        model.enable_gradient_checkpointing()
    if switches:
        model.set_attention_backend(attention)
    if device.type == "cuda" and channels_last and mode == "3d":
        if switches:
            model.enable_channels_last()
        else:
            model.to(memory_format=torch.channels_last_3d)
    return model
