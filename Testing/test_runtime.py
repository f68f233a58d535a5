"""Device and precision choices that only matter on a GPU, checked without one (torch.cuda functions stubbed)."""

import pytest
import torch

from CTDiffusionLib.errors import InputError
from CTDiffusionLib.runtime import autocast_dtype

CUDA = torch.device("cuda", 0)  # a device object needs no GPU; nothing here allocates on it


def test_bf16_autocast_only_where_the_gpu_supports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(CUDA, "auto") is None  # fp32 on a GPU without bf16
    with pytest.raises(InputError, match="Tesla V100 has no bf16 support"):
        autocast_dtype(CUDA, "on")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(CUDA, "auto") is torch.bfloat16
    assert autocast_dtype(CUDA, "off") is None


@pytest.mark.parametrize("native", [False, True])
def test_cpu_trains_in_fp32_unless_bf16_is_asked_for(monkeypatch, native):
    # AMX bf16 convolutions corrupt the heap for some 3D shapes (runtime.autocast_dtype); without AMX bf16 is slower
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native, raising=False)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None
    assert autocast_dtype(cpu, None) is None
    assert autocast_dtype(cpu, "on") is torch.bfloat16
    assert autocast_dtype(cpu, "off") is None
