"""Learning-rate schedule: the peak LR (batch-size scaling by the optimizer's rule), linear warmup, then a decay.

The schedule is a `torch.optim.lr_scheduler.LambdaLR` stepped once per optimizer step, so it
checkpoints with the standard `state_dict`.
"""

from __future__ import annotations

import logging
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from sngm_bench.config import Decay, Scaling
from sngm_bench.errors import UserError

log = logging.getLogger(__name__)


def peak_lr(optimizer_cfg, batch_size: int, lr_factor: float = 1.0) -> float:
    """The optimizer's `lr` (at its `base_batch_size`) times `lr_factor`, scaled to `batch_size` by
    the optimizer's own rule: linear (Goyal et al. 2017), square root (Krizhevsky 2014) or none."""
    if optimizer_cfg.base_batch_size <= 0:
        raise UserError(f"optimizer.base_batch_size={optimizer_cfg.base_batch_size} must be positive")
    ratio = batch_size / optimizer_cfg.base_batch_size
    scale = {Scaling.none: 1.0, Scaling.linear: ratio, Scaling.sqrt: math.sqrt(ratio)}[Scaling(optimizer_cfg.scaling)]
    return optimizer_cfg.lr * lr_factor * scale


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, cfg) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based) of `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    decay = Decay(cfg.decay)
    if decay is Decay.constant:
        return 1.0
    if decay is Decay.poly:
        return max(0.0, 1.0 - progress) ** cfg.power
    if decay is Decay.cosine:
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    passed = sum(step >= m * total_steps for m in cfg.milestones)
    return cfg.gamma**passed


def check_schedule(cfg) -> None:
    """Value checks of the schedule's keys that their types cannot express: a negative power fails
    at the last step, and a milestone outside the run (say, an epoch number) or a gamma of zero or
    less would train at an LR the config never meant, unnoticed."""
    if cfg.warmup_epochs < 0:
        raise UserError(f"schedule.warmup_epochs={cfg.warmup_epochs} must be non-negative")
    if cfg.power < 0:
        raise UserError(f"schedule.power={cfg.power} must be non-negative")
    if cfg.gamma <= 0:
        raise UserError(f"schedule.gamma={cfg.gamma} must be positive")
    if not all(0 < m < 1 for m in cfg.milestones):
        raise UserError(f"schedule.milestones={list(cfg.milestones)} must be fractions of training, each between 0 "
                        "and 1 (0.5: half way), not epochs")


def build_scheduler(optimizer: Optimizer, cfg, steps_per_epoch: int, epochs: int) -> LambdaLR:
    check_schedule(cfg)
    total = steps_per_epoch * epochs
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    if 0 < total <= warmup:  # allowed (a short check of a long protocol), but never what a study means
        decay = Decay(cfg.decay)
        log.warning("schedule.warmup_epochs=%g is not shorter than the run (epochs=%d): the LR rises for the whole run and "
                    "reaches its peak only at the last step%s", cfg.warmup_epochs, epochs,
                    "" if decay is Decay.constant else f", with no {decay.name} decay")
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, total, warmup, cfg))
