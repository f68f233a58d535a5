"""Attention runs PyTorch's fused SDPA kernel, not its silent math fallback.

Fused kernels need q/k/v with stride 1 in the last axis; a transposed view (what this code had before) makes
`scaled_dot_product_attention` fall back to the math kernel without an error. Two independent checks that fail in
that case: forcing the flash kernel (CPU has one) raises "No available kernel" for such inputs, and the profiler
records which aten kernel ran under the default ("auto") backend.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile

from CTDiffusionLib.models.aniso_unet import AttentionBlock
from CTDiffusionLib.models.attention import ATTENTION_BACKENDS, TokenAttention
from CTDiffusionLib.models.thesis_unet import ThesisUNet

LAYERS = {"thesis": lambda: TokenAttention(64, 8, 32), "aniso": lambda: AttentionBlock(64, 16, 32)}


def _input():
    return torch.randn(2, 64, 4, 8, 8)


def test_forcing_flash_fails_on_a_transposed_view():
    """The check below can fail: the forced flash kernel refuses inputs whose last axis is not contiguous."""
    q = torch.randn(2, 4, 8, 64).transpose(-1, -2)
    with pytest.raises(RuntimeError), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        F.scaled_dot_product_attention(q, q, q)


@pytest.mark.parametrize("name", LAYERS)
def test_attention_layers_run_the_forced_flash_kernel(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    layer.backend = "flash"
    x = _input()
    out = layer(x)  # raises "No available kernel" if q/k/v reach SDPA with a strided last axis
    out.square().mean().backward()
    assert out.shape == x.shape


@pytest.mark.parametrize("name", LAYERS)
def test_default_backend_runs_a_fused_kernel_not_the_math_fallback(name):
    layer = LAYERS[name]()
    with torch.no_grad(), profile() as prof:
        layer(_input())
    ops = {event.key for event in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops


@pytest.mark.parametrize("name", LAYERS)
def test_every_backend_computes_the_same_attention(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    for p in layer.parameters():  # the aniso projection starts at zero, which would hide any difference
        p.data.normal_(0, 0.1)
    x = _input()
    outputs = {}
    for backend in ("auto", "plain", "math", "flash"):
        layer.backend = backend
        with torch.no_grad():
            outputs[backend] = layer(x)
    for backend, out in outputs.items():
        torch.testing.assert_close(out, outputs["plain"], rtol=1e-4, atol=1e-5, msg=backend)


def test_set_attention_backend_reaches_every_layer_and_rejects_unknown_names():
    model = ThesisUNet(1, 1, (32, 32), ("3d", "3d"), (False, True), 1, 32, 8, mid_attention_layers=1)
    model.set_attention_backend("plain")
    backends = {m.backend for m in model.modules() if isinstance(m, TokenAttention)}
    assert backends == {"plain"} and "plain" in ATTENTION_BACKENDS
    with pytest.raises(ValueError, match="attention backend"):
        model.set_attention_backend("fastest")
