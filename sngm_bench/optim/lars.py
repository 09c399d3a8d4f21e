"""LARS: layer-wise adaptive rate scaling for large-batch SGD."""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from sngm_bench.optim.common import (
    check_non_negative, check_positive, check_unit_interval, norms, per_tensor, run_closure, state_tensors,
    trust_ratio, with_grad,
)


class LARS(Optimizer):
    r"""LARS (You, Gitman, Ginsburg, arXiv 1708.03888, Algorithm 1), per parameter tensor w:

        trust   = trust\_coefficient \cdot \|w\| / (\|g\| + weight\_decay \cdot \|w\| + eps)
                  (1 where \|w\| or \|g\| is 0)
        u_{t+1} = momentum \cdot u_t + lr \cdot trust \cdot (g + weight\_decay \cdot w)
        w_{t+1} = w_t - u_{t+1}

    with g = \nabla f(w_t). A group with `adapt=False` uses trust = 1, i.e. momentum SGD at lr
    (the factory puts biases and normalization parameters there unless asked otherwise). The
    paper has no eps; it defaults to 0 here, and the zero-norm rule keeps the ratio finite.

    The ratios of all tensors are computed at once from two `_foreach_norm` vectors, and applied
    by foreach ops that take one 0-dim device tensor per tensor: no host synchronization.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3, eps: float = 0.0, adapt: bool = True):
        check_positive(lr=lr, trust_coefficient=trust_coefficient)
        check_unit_interval(momentum=momentum)
        check_non_negative(weight_decay=weight_decay, eps=eps)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps, adapt=adapt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = with_grad(group)
            if not params:
                continue
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            buffers = state_tensors(self, params, "momentum_buffer")
            torch._foreach_mul_(buffers, momentum)
            if group["adapt"]:
                weight_norms, grad_norms = norms(params), norms(grads)
                trust = trust_ratio(weight_norms, grad_norms, group["trust_coefficient"] * weight_norms,
                                    grad_norms + weight_decay * weight_norms + group["eps"])
                step_sizes = per_tensor(lr * trust)
                torch._foreach_addcmul_(buffers, grads, step_sizes)
                if weight_decay:
                    torch._foreach_addcmul_(buffers, params, step_sizes, value=weight_decay)
            else:
                torch._foreach_add_(buffers, grads, alpha=lr)
                if weight_decay:
                    torch._foreach_add_(buffers, params, alpha=lr * weight_decay)
            torch._foreach_sub_(params, buffers)
        return loss
