"""Optimizers by config: `build_optimizer(cfg.optimizer, model, lr)`.

MSGD is torch.optim.SGD itself (foreach on CPU, fused on CUDA); the others are our own
`torch.optim.Optimizer` subclasses, one per module.
"""

from __future__ import annotations

import torch
from torch import nn

from sngm_bench.errors import UserError
from sngm_bench.optim.sngm import SNGM

__all__ = ["SNGM", "build_optimizer", "parameter_groups"]


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Split parameters into a weight-decayed group (conv and linear weights) and an undecayed one
    (biases and normalization parameters: every tensor with fewer than 2 dimensions), unless
    `decay_norm_and_bias` puts all of them in the decayed group."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def build_optimizer(cfg, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The optimizer `cfg.name` over `model`, at peak learning rate `lr` (the schedule scales it)."""
    if lr <= 0:
        raise UserError(f"the learning rate must be positive, got {lr} (optimizer.lr={cfg.lr})")
    if not 0.0 <= cfg.momentum < 1.0:
        raise UserError(f"optimizer.momentum={cfg.momentum} must be in [0, 1)")
    if cfg.weight_decay < 0:
        raise UserError(f"optimizer.weight_decay={cfg.weight_decay} must be non-negative")
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "sngm":
        return SNGM(groups, lr=lr, momentum=cfg.momentum, eps=cfg.eps)
    if cfg.name == "msgd":
        on_cuda = next(model.parameters()).is_cuda
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
            foreach=not on_cuda, fused=on_cuda or None,
        )
    raise UserError(f"optimizer={cfg.name} has no implementation")
