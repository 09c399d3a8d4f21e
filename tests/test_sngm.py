"""SNGM against an independent float64 reference of Zhao et al., Algorithm 1."""

import copy
import math

import pytest
import torch
from torch import nn

from sngm_bench.optim import SNGM, build_optimizer, parameter_groups
from sngm_bench.config import compose_config

SHAPES = [(4, 3), (5,), (2, 3, 3), (1,)]


def reference(weights, grad_steps, groups, lr, momentum):
    """Plain per-tensor float64 arithmetic straight from the equations:
    g = grad + wd*w (per group); u <- m*u + g/||g|| with ONE norm over all tensors; w <- w - lr*u."""
    w = [x.clone() for x in weights]
    u = [torch.zeros_like(x) for x in weights]
    for grads in grad_steps:
        g = [grads[i] + groups[i]["weight_decay"] * w[i] for i in range(len(w))]
        norm = math.sqrt(sum(float((x * x).sum()) for x in g))
        for i in range(len(w)):
            m = groups[i].get("momentum", momentum)
            u[i] = m * u[i] + g[i] / norm
            w[i] = w[i] - groups[i].get("lr", lr) * u[i]
    return w


def make_problem(seed=0, steps=6, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    grad_steps = [[torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(steps)]
    return weights, grad_steps


def run_sngm(weights, grad_steps, group_options, **kwargs):
    params = [nn.Parameter(w.clone()) for w in weights]
    groups = [{"params": [params[i] for i in idx], **opts} for idx, opts in group_options]
    opt = SNGM(groups, **kwargs)
    for grads in grad_steps:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return params, opt


def test_matches_float64_reference_with_two_groups_and_weight_decay():
    weights, grad_steps = make_problem(steps=7)
    # Group 1: tensors 0 and 2 with weight decay, its own lr and momentum; group 2: no decay.
    group_options = [([0, 2], {"weight_decay": 0.05, "lr": 0.03, "momentum": 0.7}), ([1, 3], {"weight_decay": 0.0})]
    per_tensor = {0: group_options[0][1], 2: group_options[0][1], 1: group_options[1][1], 3: group_options[1][1]}
    expected = reference(weights, grad_steps, [per_tensor[i] for i in range(4)], lr=0.1, momentum=0.95)
    params, _ = run_sngm(weights, grad_steps, group_options, lr=0.1, momentum=0.95)
    for param, want in zip(params, expected):
        torch.testing.assert_close(param.detach(), want, rtol=1e-12, atol=1e-14)


def test_one_norm_over_all_groups_not_per_group():
    weights, grad_steps = make_problem(steps=1)
    params, _ = run_sngm(weights, grad_steps, [([0, 1], {}), ([2, 3], {})], lr=1.0, momentum=0.0)
    step = torch.cat([(w - p.detach()).flatten() for w, p in zip(weights, params)])
    # One normalized step has unit length overall; per-group norms would give sqrt(2).
    assert float(step.norm()) == pytest.approx(1.0, rel=1e-12)


def test_step_length_never_exceeds_lr_over_one_minus_momentum():
    weights, grad_steps = make_problem(steps=60)
    params = [nn.Parameter(w.clone()) for w in weights]
    opt = SNGM(params, lr=0.2, momentum=0.9)
    longest = 0.0
    for grads in grad_steps:
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone() * 0.01  # scale-free: the gradient's size must not matter
        opt.step()
        length = math.sqrt(sum(float(((p.detach() - b) ** 2).sum()) for p, b in zip(params, before)))
        longest = max(longest, length)
    assert longest <= 0.2 / (1 - 0.9) * (1 + 1e-9)
    assert longest > 0.2  # momentum does lengthen the step


def test_zero_gradient_and_zero_weights_stay_finite():
    params = [nn.Parameter(torch.zeros(3, 3)), nn.Parameter(torch.zeros(3))]
    opt = SNGM([{"params": params, "weight_decay": 0.1}], lr=0.1)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(p.detach(), torch.zeros_like(p)) for p in params)
    params[0].grad = torch.ones(3, 3)
    params[1].grad = None  # parameters without gradient are skipped
    opt.step()
    assert torch.isfinite(params[0]).all() and torch.equal(params[1].detach(), torch.zeros(3))


def test_state_dict_round_trip_continues_exactly():
    weights, grad_steps = make_problem(steps=8)
    full, _ = run_sngm(weights, grad_steps, [([0, 1, 2, 3], {"weight_decay": 0.01})], lr=0.1, momentum=0.9)
    first, opt = run_sngm(weights, grad_steps[:4], [([0, 1, 2, 3], {"weight_decay": 0.01})], lr=0.1, momentum=0.9)
    saved_params = [p.detach().clone() for p in first]
    saved_state = copy.deepcopy(opt.state_dict())
    params = [nn.Parameter(w) for w in saved_params]
    resumed = SNGM([{"params": params, "weight_decay": 0.01}], lr=0.1, momentum=0.9)
    resumed.load_state_dict(saved_state)
    for grads in grad_steps[4:]:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        resumed.step()
    for a, b in zip(full, params):
        assert torch.equal(a.detach(), b.detach())


def test_closure_and_descent_on_rosenbrock():
    xy = nn.Parameter(torch.tensor([-1.5, 2.0], dtype=torch.float64))
    opt = SNGM([xy], lr=0.002, momentum=0.9)

    def closure():
        opt.zero_grad()
        loss = (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2
        loss.backward()
        return loss.detach()

    start = float(closure())
    losses = [float(opt.step(closure)) for _ in range(3000)]
    assert losses[-1] < start / 100


def test_float32_and_bfloat16_parameters():
    for dtype in (torch.float32, torch.bfloat16):
        weights, grad_steps = make_problem(steps=3, dtype=dtype)
        params, _ = run_sngm(weights, grad_steps, [([0, 1, 2, 3], {"weight_decay": 0.01})], lr=0.1)
        expected = reference([w.double() for w in weights], [[g.double() for g in gs] for gs in grad_steps],
                             [{"weight_decay": 0.01}] * 4, lr=0.1, momentum=0.9)
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        for p, e in zip(params, expected):
            assert p.dtype == dtype
            torch.testing.assert_close(p.detach().double(), e, rtol=tol, atol=tol)


def test_factory_excludes_biases_and_norm_parameters_from_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    decayed, undecayed = parameter_groups(model, 5e-4, decay_norm_and_bias=False)
    assert decayed["weight_decay"] == 5e-4 and undecayed["weight_decay"] == 0.0
    assert [p.ndim for p in decayed["params"]] == [4, 2]
    assert sorted(p.ndim for p in undecayed["params"]) == [1, 1, 1, 1]
    (everything,) = parameter_groups(model, 5e-4, decay_norm_and_bias=True)
    assert len(everything["params"]) == 6

    cfg = compose_config(["optimizer=sngm"]).optimizer
    opt = build_optimizer(cfg, model, lr=0.3)
    assert isinstance(opt, SNGM) and [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]
    msgd = build_optimizer(compose_config(["optimizer=msgd"]).optimizer, model, lr=0.3)
    assert type(msgd) is torch.optim.SGD and msgd.defaults["momentum"] == 0.9 and not msgd.defaults["nesterov"]
