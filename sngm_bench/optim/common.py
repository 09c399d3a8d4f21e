"""Building blocks shared by our optimizers: argument checks and multi-tensor arithmetic.

The arithmetic works on lists of tensors with `torch._foreach_*` ops (one call per operation for
all tensors of a group) and keeps every result on the device, so nothing here waits for the host.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.optim import Optimizer


class HyperparameterError(ValueError):
    """A hyperparameter out of its range; the message starts with `name=value`."""


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise HyperparameterError(f"{name}={value} must be positive")


def check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise HyperparameterError(f"{name}={value} must be non-negative")


def check_unit_interval(**values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise HyperparameterError(f"{name}={value} must be in [0, 1)")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise HyperparameterError(f"{name}={value!r} must be one of {', '.join(choices)}")


def run_closure(closure):
    """The loss of `closure` evaluated with gradients enabled (step() itself runs without)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def with_grad(group: dict) -> tuple[list[Tensor], list[Tensor]]:
    """The group's parameters that have a gradient, and those gradients; the others are skipped."""
    params = [p for p in group["params"] if p.grad is not None]
    return params, [p.grad for p in params]


def state_tensors(optimizer: Optimizer, params: list[Tensor], name: str) -> list[Tensor]:
    """Each parameter's state tensor `name`, created as zeros shaped like it on first use."""
    tensors = []
    for p in params:
        state = optimizer.state[p]
        if name not in state:
            state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        tensors.append(state[name])
    return tensors


def norms(tensors: list[Tensor]) -> Tensor:
    """The Euclidean norm of each tensor as one vector, accumulated in at least float32 (so bf16
    tensors get accurate norms)."""
    dtype = functools.reduce(torch.promote_types, {t.dtype for t in tensors}, torch.float32)
    return torch.stack(torch._foreach_norm(tensors, dtype=dtype))


def trust_ratio(weight_norms: Tensor, update_norms: Tensor, numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator per tensor, or 1 for a tensor whose weight or update norm is 0 (a
    zero-initialized weight, a zero gradient): the layer-wise ratio of LARS and LAMB."""
    usable = (weight_norms > 0) & (update_norms > 0)
    return torch.where(usable, numerator / denominator, torch.ones_like(numerator))


def per_tensor(factors: Tensor) -> list[Tensor]:
    """The entries of a vector as 0-dim device tensors: foreach ops then scale tensor i by
    factors[i] without reading the values on the host."""
    return list(factors.unbind())


def add_scaled_(targets: list[Tensor], tensors: list[Tensor], scale: float | Tensor | list[Tensor],
                value: float = 1.0) -> None:
    """targets <- targets + value * scale * tensors, in place (fresh CPU memory costs page faults on
    every step), where `scale` is a number, a 0-dim device tensor (one factor for all tensors), a
    vector (one per tensor) or its `per_tensor` list (split once for several calls), never read on
    the host."""
    if isinstance(scale, Tensor):
        scale = per_tensor(scale) if scale.ndim else [scale] * len(targets)
    if isinstance(scale, list):
        torch._foreach_addcmul_(targets, tensors, scale, value=value)
    else:
        torch._foreach_add_(targets, tensors, alpha=value * scale)
