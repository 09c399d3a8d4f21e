"""LAMB: layer-wise adaptive moments for large-batch training."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sngm_bench.optim.common import (
    add_scaled_, check_non_negative, check_positive, check_unit_interval, norms, per_tensor, run_closure,
    state_tensors, trust_ratio, with_grad,
)
from sngm_bench.optim.compiled import CompilableOptimizer


def lamb_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                lr: float | Tensor, eps_terms: list[float] | Tensor, scales: list[float] | Tensor, *,
                beta1: float, beta2: float, weight_decay: float, adapt: bool, max_trust_ratio: float | None) -> None:
    """One LAMB step of a group's tensors, in place (see LAMB). With the bias corrections bc1, bc2
    of each tensor's step, r = (m / bc1) / (sqrt(v / bc2) + eps) + wd*w is computed as
    wd*w + scale * m / (sqrt(v) + eps_term), scale = sqrt(bc2) / bc1 and eps_term = eps*sqrt(bc2):
    `lr` a float or 0-dim tensor, `scales` and `eps_terms` one per tensor, host floats or a vector."""
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    updates = torch._foreach_mul(params, weight_decay)
    if isinstance(scales, list):  # host floats (eager), which foreach ops take as scalar lists
        torch._foreach_add_(denominators, eps_terms)
        torch._foreach_addcdiv_(updates, exp_avgs, denominators, scales)
    else:  # a device vector (compiled)
        torch._foreach_add_(denominators, per_tensor(eps_terms))
        torch._foreach_addcmul_(updates, torch._foreach_div(exp_avgs, denominators), per_tensor(scales))
    step_size = lr
    if adapt:
        weight_norms, update_norms = norms(params), norms(updates)
        trust = trust_ratio(weight_norms, update_norms, weight_norms, update_norms)
        if max_trust_ratio is not None:
            trust = trust.clamp_max(max_trust_ratio)
        step_size = lr * trust
    add_scaled_(params, updates, step_size, value=-1.0)


class LAMB(CompilableOptimizer):
    r"""LAMB (You et al., arXiv 1904.00962, Algorithm 2, with Adam's bias correction), per
    parameter tensor w at step t:

        m_t   = \beta_1 m_{t-1} + (1 - \beta_1) g_t,      \hat m_t = m_t / (1 - \beta_1^t)
        v_t   = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2,    \hat v_t = v_t / (1 - \beta_2^t)
        r_t   = \hat m_t / (\sqrt{\hat v_t} + eps) + weight\_decay \cdot w_t
        trust = \|w_t\| / \|r_t\|   (1 where either norm is 0; at most max_trust_ratio if set)
        w_{t+1} = w_t - lr \cdot trust \cdot r_t

    A group with `adapt=False` uses trust = 1 (Adam with this weight decay). The paper's
    Algorithm 2 clamps \|w\| by a function phi; we leave \|w\| as is and offer the clamp on the
    ratio that timm calls trust_clip (`max_trust_ratio`). With `max_grad_norm` set, all
    gradients are first scaled by min(1, max_grad_norm / \|g\|) over all groups; by default they
    are not (timm's Lamb clips at 1.0 by default, NVIDIA's FusedLAMB too).

    The ratios of all tensors are computed at once from `_foreach_norm` vectors and applied by
    foreach ops that take one 0-dim device tensor per tensor: no host synchronization. The step
    count is a Python int per tensor, so the bias corrections are host scalars; with
    `compile_backend` (`sngm_bench.optim.compiled`) they and the lr reach the compiled step as a
    device vector.
    """

    update_function = staticmethod(lamb_update)

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, adapt: bool = True, max_trust_ratio: float | None = None,
                 max_grad_norm: float | None = None, compile_backend: str | None = None):
        check_positive(lr=lr, eps=eps)
        check_unit_interval(beta1=betas[0], beta2=betas[1])
        check_non_negative(weight_decay=weight_decay)
        if max_trust_ratio is not None:
            check_positive(max_trust_ratio=max_trust_ratio)
        if max_grad_norm is not None:
            check_positive(max_grad_norm=max_grad_norm)
        self.max_grad_norm = max_grad_norm  # one clip over all groups, so not a group setting
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adapt=adapt,
                                      max_trust_ratio=max_trust_ratio), compile_backend)

    @torch.no_grad()
    def step(self, closure=None):
        loss = run_closure(closure)
        groups = [(group, *with_grad(group)) for group in self.param_groups]
        groups = [(group, params, grads) for group, params, grads in groups if params]
        if self.max_grad_norm is not None and groups:
            total = torch.linalg.vector_norm(norms([g for _, _, grads in groups for g in grads]))
            clip = self.max_grad_norm / total.clamp_min(self.max_grad_norm)
            groups = [(group, params, torch._foreach_mul(grads, clip)) for group, params, grads in groups]
        for group, params, grads in groups:
            self._update(group, params, grads)
        return loss

    def _update(self, group, params, grads):
        beta1, beta2 = group["betas"]
        exp_avgs = state_tensors(self, params, "exp_avg")
        exp_avg_sqs = state_tensors(self, params, "exp_avg_sq")
        steps = []
        for p in params:
            self.state[p]["step"] = self.state[p].get("step", 0) + 1
            steps.append(self.state[p]["step"])
        root_bc2 = [math.sqrt(1.0 - beta2**t) for t in steps]
        lr, eps_terms, scales = self.step_values(params[0], group["lr"], [group["eps"] * c for c in root_bc2],
                                                 [c / (1.0 - beta1**t) for c, t in zip(root_bc2, steps)])
        self.update(params, grads, exp_avgs, exp_avg_sqs, lr, eps_terms, scales, beta1=beta1, beta2=beta2,
                    weight_decay=group["weight_decay"], adapt=group["adapt"], max_trust_ratio=group["max_trust_ratio"])
