"""SNGM: stochastic normalized gradient descent with momentum."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.sgd import sgd

from sngm_bench.optim.common import (
    add_scaled_, check_choice, check_non_negative, check_positive, check_unit_interval, norms, run_closure,
    state_tensors, with_grad,
)
from sngm_bench.optim.compiled import CompilableOptimizer

WEIGHT_DECAY_MODES = ("l2", "decoupled")
NORMS = ("global", "layer")
# Where torch's fused SGD kernel applies to SNGM: it divides the gradients by a float32 `grad_scale`
# tensor, which keeps float32, float16 and bfloat16 parameters exact but would round a float64 norm.
FUSED_DEVICES = ("cpu", "cuda")
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def sngm_update(params: list[Tensor], directions: list[Tensor], buffers: list[Tensor], global_norm: Tensor | None,
                lr: float | Tensor, *, momentum: float, eps: float) -> None:
    """The momentum and weight update of SNGM in foreach ops, in place: each direction is divided
    by `global_norm`, or by its own norm where that is None (`norm="layer"`), floored at `eps`;
    `lr` a float or a 0-dim tensor."""
    norm = (global_norm if global_norm is not None else norms(directions)).clamp_min(eps)
    torch._foreach_mul_(buffers, momentum)
    add_scaled_(buffers, directions, 1.0 / norm)
    add_scaled_(params, buffers, lr, value=-1.0)


class SNGM(CompilableOptimizer):
    r"""Stochastic normalized gradient descent with momentum (Zhao et al., arXiv 2007.13985, Alg. 1).

    With weight decay folded into the gradient of each parameter group (`weight_decay_mode="l2"`,
    the default),

        g_t     = \nabla f(w_t) + weight\_decay \cdot w_t
        u_{t+1} = momentum \cdot u_t + g_t / \|g_t\|
        w_{t+1} = w_t - lr \cdot u_{t+1}

    where \|g_t\| is ONE Euclidean norm over all parameters of all groups (`norm="global"`, the
    paper's), so each step moves at most lr / (1 - momentum) whatever the scale of the gradient.
    Options, because the paper does not settle them for us:

    - `weight_decay_mode="decoupled"`: g_t = \nabla f(w_t), and the decay acts outside the
      normalized direction, w_{t+1} = w_t - lr \cdot u_{t+1} - lr \cdot weight\_decay \cdot w_t.
    - `norm="layer"`: each tensor's g_t is divided by its own norm instead of the global one.

    `eps` only floors the norm, so that an all-zero gradient adds nothing to u instead of
    producing NaN. No host synchronization: the norm stays a device tensor.

    With the global norm, the last two lines are momentum SGD on g_t with its gradient divided by
    \|g_t\|, which is what torch's fused SGD kernel computes when given \|g_t\| as its
    `grad_scale`: one kernel reads g, u and w once, where separate foreach ops would pass over
    them several times. `fused` (the default, on CPU and CUDA for float32, float16 and bfloat16
    parameters) takes that kernel, which leaves each p.grad divided by the norm as torch's
    fused optimizers leave gradients unscaled; `fused=False` takes foreach ops, as does every
    other case (float64, `norm="layer"`). With `compile_backend`, every case takes the foreach form,
    compiled by torch.compile (`sngm_bench.optim.compiled`), also where the fused kernel applies.
    """

    update_function = staticmethod(sngm_update)

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eps: float = 1e-12,
                 weight_decay_mode: str = "l2", norm: str = "global", fused: bool = True,
                 compile_backend: str | None = None):
        check_positive(lr=lr, eps=eps)
        check_unit_interval(momentum=momentum)
        check_non_negative(weight_decay=weight_decay)
        check_choice("weight_decay_mode", weight_decay_mode, WEIGHT_DECAY_MODES)
        check_choice("norm", norm, NORMS)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps,
                                      weight_decay_mode=weight_decay_mode, norm=norm, fused=fused), compile_backend)

    def __setstate__(self, state):  # state saved before `fused` existed
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("fused", True)

    @torch.no_grad()
    def step(self, closure=None):
        loss = run_closure(closure)
        groups = []  # (group, params, d) of each group with gradients
        for group in self.param_groups:
            params, grads = with_grad(group)
            if not params:
                continue
            if group["weight_decay"] and group["weight_decay_mode"] == "l2":
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            groups.append((group, params, grads))

        global_directions = [d for group, _, directions in groups if group["norm"] == "global" for d in directions]
        global_norm = torch.linalg.vector_norm(norms(global_directions)) if global_directions else None
        for group, params, directions in groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            buffers = state_tensors(self, params, "momentum_buffer")
            if weight_decay and group["weight_decay_mode"] == "decoupled":
                torch._foreach_mul_(params, 1.0 - lr * weight_decay)
            group_norm = global_norm if group["norm"] == "global" else None
            if not self.compile_backend and takes_fused_kernel(group, params):
                sgd(params, directions, buffers, fused=True, grad_scale=group_norm.clamp_min(group["eps"]),
                    weight_decay=0.0, momentum=group["momentum"], lr=lr, dampening=0.0, nesterov=False,
                    maximize=False)
            else:
                (step_lr,) = self.step_values(params[0], lr)
                self.update(params, directions, buffers, group_norm, step_lr, momentum=group["momentum"],
                            eps=group["eps"])
        return loss


def takes_fused_kernel(group: dict, params: list[torch.Tensor]) -> bool:
    """Whether `group`'s step runs as torch's fused SGD kernel (see SNGM)."""
    return (group["fused"] and group["norm"] == "global"
            and all(p.device.type in FUSED_DEVICES and p.dtype in FUSED_DTYPES for p in params))
