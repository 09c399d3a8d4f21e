"""Where and in what precision a run computes."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from sngm_bench.config import Device, Precision
from sngm_bench.errors import UserError


def resolve_device(choice: Device, local_rank: int = 0) -> torch.device:
    """`auto` takes the GPU when there is one; each process of a multi-GPU run takes its own."""
    if choice is Device.cuda and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    if choice is Device.cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"process {local_rank} has no GPU: only {torch.cuda.device_count()} are visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def autocast_context(device: torch.device, precision: Precision):
    """bf16 autocast for `precision=bf16` (master weights and optimizer stay fp32)."""
    if precision is Precision.fp32:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"precision=bf16 is not supported on {torch.cuda.get_device_name(device)}; use precision=fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16)
