"""Optimizers by config: `build_optimizer(cfg.optimizer, model, lr)`.

MSGD is torch.optim.SGD itself (foreach on CPU, fused on CUDA); SNGM, LARS and LAMB are our own
`torch.optim.Optimizer` subclasses, one per module, whose steps can run compiled
(`sngm_bench.optim.compiled`). Any other class comes from a config's `_target_`
(`sngm_bench.optim.target`), with the same parameter groups.
"""

from __future__ import annotations

import torch
from torch import nn

from sngm_bench.errors import UserError
from sngm_bench.optim.common import HyperparameterError, check_non_negative, check_unit_interval
from sngm_bench.optim.lamb import LAMB
from sngm_bench.optim.lars import LARS
from sngm_bench.optim.sngm import SNGM
from sngm_bench.optim.target import is_target, resolve

__all__ = ["LAMB", "LARS", "SNGM", "build_optimizer", "parameter_groups"]


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                     adapt_norm_and_bias: bool | None = None) -> list[dict]:
    """The model's trainable parameters in groups by kind: weights (conv and linear, ndim > 1)
    get `weight_decay`; biases and normalization parameters (ndim <= 1) get it only with
    `decay_norm_and_bias`. For LARS and LAMB, `adapt_norm_and_bias` (True or False, None for
    the others) sets the group flag `adapt`, whether the trust ratio scales their update; weights
    are always adapted. Kinds with the same settings share one group; empty groups are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    weights = {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay}
    vectors = {"params": [p for p in params if p.ndim <= 1],
               "weight_decay": weight_decay if decay_norm_and_bias else 0.0}
    if adapt_norm_and_bias is not None:
        weights["adapt"], vectors["adapt"] = True, adapt_norm_and_bias
    if all(weights[key] == vectors[key] for key in weights if key != "params"):
        return [{**weights, "params": params}]
    return [group for group in (weights, vectors) if group["params"]]


def _sngm(cfg, model, lr, compile_backend):
    return SNGM(parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias), lr=lr, momentum=cfg.momentum,
                eps=cfg.eps, weight_decay_mode=cfg.weight_decay_mode, norm=cfg.norm, compile_backend=compile_backend)


def _msgd(cfg, model, lr, compile_backend):  # torch's fused SGD kernel on CUDA: nothing to compile
    check_unit_interval(momentum=cfg.momentum)
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.SGD(parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias), lr=lr,
                           momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=not on_cuda, fused=on_cuda or None)


def _lars(cfg, model, lr, compile_backend):
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias, cfg.adapt_norm_and_bias)
    return LARS(groups, lr=lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient, eps=cfg.eps,
                compile_backend=compile_backend)


def _lamb(cfg, model, lr, compile_backend):
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias, cfg.adapt_norm_and_bias)
    return LAMB(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, max_trust_ratio=cfg.max_trust_ratio,
                max_grad_norm=cfg.max_grad_norm, compile_backend=compile_backend)


BUILDERS = {"sngm": _sngm, "msgd": _msgd, "lars": _lars, "lamb": _lamb}


def build_optimizer(cfg, model: nn.Module, lr: float, compile_backend: str | None = None) -> torch.optim.Optimizer:
    """The optimizer `cfg.name` (or `cfg._target_`) over `model`, at peak learning rate `lr` (the
    schedule scales it), SNGM's, LARS's and LAMB's step compiled with `compile_backend` if given
    (MSGD's and `_target_` classes' steps run as they are). A bad hyperparameter stops with a
    UserError that names its key, e.g. `optimizer.momentum=1.5`."""
    target = resolve(cfg) if is_target(cfg) else None
    settings = target.settings if target else cfg
    if lr <= 0:
        raise UserError(f"the learning rate must be positive, got {lr} (optimizer.lr={settings.lr})")
    if target is None and cfg.name not in BUILDERS:
        raise UserError(f"optimizer={cfg.name} has no implementation")
    try:
        check_non_negative(weight_decay=settings.weight_decay)  # goes into the groups, where no constructor checks it
        if target:
            return target.build(parameter_groups(model, settings.weight_decay, settings.decay_norm_and_bias), lr)
        return BUILDERS[cfg.name](cfg, model, lr, compile_backend)
    except HyperparameterError as err:
        raise UserError(f"optimizer.{err}") from err
