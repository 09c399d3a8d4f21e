"""LARS: layer-wise adaptive rate scaling for large-batch SGD."""

from __future__ import annotations

import torch
from torch import Tensor

from sngm_bench.optim.common import (
    add_scaled_, check_non_negative, check_positive, check_unit_interval, norms, per_tensor, run_closure,
    state_tensors, trust_ratio, with_grad,
)
from sngm_bench.optim.compiled import CompilableOptimizer


def lars_update(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor], lr: float | Tensor, *,
                momentum: float, weight_decay: float, trust_coefficient: float, eps: float, adapt: bool) -> None:
    """One LARS step of a group's tensors, in place (see LARS); `lr` a float or a 0-dim tensor."""
    torch._foreach_mul_(buffers, momentum)
    step_size = lr
    if adapt:
        weight_norms, grad_norms = norms(params), norms(grads)
        step_size = per_tensor(lr * trust_ratio(weight_norms, grad_norms, trust_coefficient * weight_norms,
                                                grad_norms + weight_decay * weight_norms + eps))
    add_scaled_(buffers, grads, step_size)
    if weight_decay:
        add_scaled_(buffers, params, step_size, value=weight_decay)
    torch._foreach_sub_(params, buffers)


class LARS(CompilableOptimizer):
    r"""LARS (You, Gitman, Ginsburg, arXiv 1708.03888, Algorithm 1), per parameter tensor w:

        trust   = trust\_coefficient \cdot \|w\| / (\|g\| + weight\_decay \cdot \|w\| + eps)
                  (1 where \|w\| or \|g\| is 0)
        u_{t+1} = momentum \cdot u_t + lr \cdot trust \cdot (g + weight\_decay \cdot w)
        w_{t+1} = w_t - u_{t+1}

    with g = \nabla f(w_t). The lr enters the buffer, as in the paper: under a schedule this differs
    from timm's Lars and torch's SGD, whose buffers hold unscaled steps. A group with `adapt=False`
    uses trust = 1, i.e. momentum SGD at lr in that form (the factory puts biases and normalization
    parameters there unless asked otherwise). The paper has no eps; it defaults to 0 here, and the
    zero-norm rule keeps the ratio finite.

    The ratios of all tensors are computed at once from two `_foreach_norm` vectors, and applied
    by foreach ops that take one 0-dim device tensor per tensor: no host synchronization. With
    `compile_backend`, torch.compile fuses them (`sngm_bench.optim.compiled`).
    """

    update_function = staticmethod(lars_update)

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3, eps: float = 0.0, adapt: bool = True,
                 compile_backend: str | None = None):
        check_positive(lr=lr, trust_coefficient=trust_coefficient)
        check_unit_interval(momentum=momentum)
        check_non_negative(weight_decay=weight_decay, eps=eps)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps, adapt=adapt), compile_backend)

    @torch.no_grad()
    def step(self, closure=None):
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = with_grad(group)
            if not params:
                continue
            buffers = state_tensors(self, params, "momentum_buffer")
            (lr,) = self.step_values(params[0], group["lr"])
            self.update(params, grads, buffers, lr, momentum=group["momentum"], weight_decay=group["weight_decay"],
                        trust_coefficient=group["trust_coefficient"], eps=group["eps"], adapt=group["adapt"])
        return loss
