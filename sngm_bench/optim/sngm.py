"""SNGM: stochastic normalized gradient descent with momentum."""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class SNGM(Optimizer):
    r"""Stochastic normalized gradient descent with momentum (Zhao et al., arXiv 2007.13985, Alg. 1).

    With weight decay folded into the gradient of each parameter group,

        g_t     = \nabla f(w_t) + weight\_decay \cdot w_t
        u_{t+1} = momentum \cdot u_t + g_t / \|g_t\|
        w_{t+1} = w_t - lr \cdot u_{t+1}

    where \|g_t\| is ONE Euclidean norm over all parameters of all groups, so each step moves
    at most lr / (1 - momentum) whatever the scale of the gradient. `eps` only floors the norm
    so that an all-zero gradient leaves u unchanged instead of producing NaN.

    The momentum update is computed as u <- lerp(u, g / ((1 - momentum) \|g\|), 1 - momentum),
    which is the same rule in one pass over u. No host synchronization: the norm stays a
    device tensor.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eps: float = 1e-12):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            groups.append((group, params, grads))
        if not groups:
            return loss

        norms = torch._foreach_norm([g for _, _, grads in groups for g in grads])
        norms = torch.stack(norms)
        norm = torch.linalg.vector_norm(norms.to(torch.promote_types(norms.dtype, torch.float32)))
        for group, params, grads in groups:
            momentum = group["momentum"]
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
            scale = 1.0 / ((1.0 - momentum) * norm.clamp_min(group["eps"]))
            torch._foreach_lerp_(buffers, torch._foreach_mul(grads, scale), 1.0 - momentum)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss
