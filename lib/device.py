"""The compute device and mixed precision, shared by training and evaluation."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable

import torch

from lib.errors import PipelineError


class DeviceError(PipelineError):
    """The device a parameter asks for does not exist here."""


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """auto | cpu | cuda | cuda:N → a torch device; ``key`` names the parameter in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"{key} = {name!r} but CUDA is not available; use auto or cpu")
    return torch.device(name)


def autocast_and_scaler(
    device: torch.device, use_amp: bool
) -> tuple[Callable[[], contextlib.AbstractContextManager], torch.amp.GradScaler | None]:
    """AMP on CUDA only: bf16 where supported (no scaler needed), else fp16 with a scaler."""
    if device.type != "cuda" or not use_amp:
        return contextlib.nullcontext, None
    if torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16), None
    return lambda: torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def inference_dtype(device: torch.device, use_amp: bool) -> torch.dtype:
    """Weight dtype for inference: bf16 on a GPU that has it (with AMP on), so each batch
    runs on bf16 weights instead of casting fp32 weights under autocast every time; else
    float32 (on fp16-only GPUs inference keeps autocast: fp16 weights would overflow)."""
    if device.type == "cuda" and use_amp and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak memory in MiB, keyed by what was measured: the CUDA allocator's
    peak on a GPU, else the peak resident set of the process."""
    if device.type == "cuda":
        return {"cuda_max_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    return {
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    }
