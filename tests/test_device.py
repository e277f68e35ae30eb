"""lib/device.py: the device a parameter names, and mixed precision only where it helps."""

from __future__ import annotations

import contextlib

import pytest
import torch

from lib.device import DeviceError, autocast_and_scaler, inference_dtype, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match=r"eval.device = 'cuda:1'.*use auto or cpu"):
            resolve_device("cuda:1", "eval.device")
    else:
        assert resolve_device("cuda:0", "eval.device") == torch.device("cuda", 0)


def test_no_autocast_or_scaler_on_the_cpu_or_without_amp():
    for device, amp in ((torch.device("cpu"), True), (torch.device("cpu"), False)):
        autocast, scaler = autocast_and_scaler(device, amp)
        assert autocast is contextlib.nullcontext and scaler is None
    if torch.cuda.is_available():
        autocast, scaler = autocast_and_scaler(torch.device("cuda"), True)
        with autocast():
            y = torch.ones(2, 2, device="cuda") @ torch.ones(2, 2, device="cuda")
        assert y.dtype in (torch.bfloat16, torch.float16)
        assert (scaler is None) == torch.cuda.is_bf16_supported()


def test_inference_weights_are_bf16_only_on_a_bf16_gpu_with_amp():
    assert inference_dtype(torch.device("cpu"), True) == torch.float32
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        assert inference_dtype(cuda, True) == expected
        assert inference_dtype(cuda, False) == torch.float32
