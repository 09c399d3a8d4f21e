"""SNGM, MSGD, LARS and LAMB against independent float64 references written from their papers'
equations, shared properties of all four, and the factory's exclusion switches."""

import copy
import math
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from sngm_bench.config import compose_config
from sngm_bench.errors import UserError
from sngm_bench.models.cifar_resnet import CifarResNet
from sngm_bench.optim import LAMB, LARS, SNGM, build_optimizer, parameter_groups
from sngm_bench.optim import sngm as sngm_module
from sngm_bench.optim.compiled import CompilableOptimizer

SHAPES = [(4, 3), (5,), (2, 3, 3), (1,)]
GROUPS = [[0, 2], [1, 3]]  # tensor indices of the two parameter groups


def make_problem(seed=0, steps=6, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    grad_steps = [[torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES] for _ in range(steps)]
    return weights, grad_steps


def run(make_optimizer, weights, grad_steps, group_options=({}, {})):
    """Parameters from `weights` in the two GROUPS, after one step per entry of `grad_steps`."""
    params = [nn.Parameter(w.clone()) for w in weights]
    groups = [{"params": [params[i] for i in idx], **opts} for idx, opts in zip(GROUPS, group_options)]
    optimizer = make_optimizer(groups)
    for grads in grad_steps:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
    return params, optimizer


def options_per_tensor(defaults, group_options):
    """Each tensor's hyperparameters: the defaults overridden by its group's options."""
    options = [None] * len(SHAPES)
    for idx, opts in zip(GROUPS, group_options):
        for i in idx:
            options[i] = {**defaults, **opts}
    return options


def norm(x):
    return math.sqrt(float((x * x).sum()))


# References: plain per-tensor float64 arithmetic straight from the equations.

def sngm_reference(weights, grad_steps, h):
    """g = grad (+ wd*w if l2); u <- m*u + g/||g||, ||g|| ONE norm over all tensors (or per tensor
    with norm="layer"); w <- w - lr*u (- lr*wd*w if decoupled)."""
    w = [x.clone() for x in weights]
    u = [torch.zeros_like(x) for x in weights]
    for grads in grad_steps:
        g = [grads[i] + (h[i]["weight_decay"] * w[i] if h[i]["weight_decay_mode"] == "l2" else 0)
             for i in range(len(w))]
        global_norm = math.sqrt(sum(norm(x) ** 2 for x in g))
        for i in range(len(w)):
            n = global_norm if h[i]["norm"] == "global" else norm(g[i])
            u[i] = h[i]["momentum"] * u[i] + g[i] / n
            decay = h[i]["lr"] * h[i]["weight_decay"] * w[i] if h[i]["weight_decay_mode"] == "decoupled" else 0
            w[i] = w[i] - h[i]["lr"] * u[i] - decay
    return w


def msgd_reference(weights, grad_steps, h):
    """Heavy ball: u <- m*u + grad + wd*w; w <- w - lr*u."""
    w = [x.clone() for x in weights]
    u = [torch.zeros_like(x) for x in weights]
    for grads in grad_steps:
        for i in range(len(w)):
            u[i] = h[i]["momentum"] * u[i] + grads[i] + h[i]["weight_decay"] * w[i]
            w[i] = w[i] - h[i]["lr"] * u[i]
    return w


def lars_reference(weights, grad_steps, h):
    """trust = eta*||w|| / (||g|| + wd*||w|| + eps) (1 if a norm is 0 or not adapted);
    u <- m*u + lr*trust*(g + wd*w); w <- w - u."""
    w = [x.clone() for x in weights]
    u = [torch.zeros_like(x) for x in weights]
    for grads in grad_steps:
        for i in range(len(w)):
            o, wn, gn = h[i], norm(w[i]), norm(grads[i])
            trust = 1.0
            if o["adapt"] and wn > 0 and gn > 0:
                trust = o["trust_coefficient"] * wn / (gn + o["weight_decay"] * wn + o["eps"])
            u[i] = o["momentum"] * u[i] + o["lr"] * trust * (grads[i] + o["weight_decay"] * w[i])
            w[i] = w[i] - u[i]
    return w


def lamb_reference(weights, grad_steps, h, max_grad_norm=None):
    """Adam moments with bias correction; r = m_hat/(sqrt(v_hat)+eps) + wd*w; trust = ||w||/||r||
    (1 if a norm is 0 or not adapted; clamped at max_trust_ratio); w <- w - lr*trust*r."""
    w = [x.clone() for x in weights]
    m = [torch.zeros_like(x) for x in weights]
    v = [torch.zeros_like(x) for x in weights]
    for t, grads in enumerate(grad_steps, start=1):
        if max_grad_norm is not None:
            total = math.sqrt(sum(norm(g) ** 2 for g in grads))
            grads = [g * min(1.0, max_grad_norm / total) for g in grads]
        for i in range(len(w)):
            o = h[i]
            beta1, beta2 = o["betas"]
            m[i] = beta1 * m[i] + (1 - beta1) * grads[i]
            v[i] = beta2 * v[i] + (1 - beta2) * grads[i] ** 2
            m_hat, v_hat = m[i] / (1 - beta1**t), v[i] / (1 - beta2**t)
            r = m_hat / (v_hat.sqrt() + o["eps"]) + o["weight_decay"] * w[i]
            wn, rn = norm(w[i]), norm(r)
            trust = wn / rn if o["adapt"] and wn > 0 and rn > 0 else 1.0
            if o.get("max_trust_ratio") is not None:
                trust = min(trust, o["max_trust_ratio"])
            w[i] = w[i] - o["lr"] * trust * r
    return w


# Each case: (optimizer class, constructor defaults, options of the two groups, reference).
# Group 1 has weight decay (and its own lr or momentum), group 2 none; momentum/betas non-default.
SNGM_DEFAULTS = dict(lr=0.1, momentum=0.95, weight_decay=0.0, weight_decay_mode="l2", norm="global")
SNGM_GROUPS = ({"weight_decay": 0.05, "lr": 0.03, "momentum": 0.7}, {"weight_decay": 0.0})
LARS_DEFAULTS = dict(lr=0.5, momentum=0.8, weight_decay=0.0, trust_coefficient=0.02, eps=1e-3, adapt=True)
LAMB_DEFAULTS = dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0, adapt=True, max_trust_ratio=None)
CASES = {
    "sngm": (SNGM, SNGM_DEFAULTS, SNGM_GROUPS, sngm_reference),
    "sngm-decoupled": (SNGM, {**SNGM_DEFAULTS, "weight_decay_mode": "decoupled"}, SNGM_GROUPS, sngm_reference),
    "sngm-layer": (SNGM, {**SNGM_DEFAULTS, "norm": "layer"}, SNGM_GROUPS, sngm_reference),
    "sngm-layer-decoupled": (SNGM, {**SNGM_DEFAULTS, "norm": "layer", "weight_decay_mode": "decoupled"},
                             SNGM_GROUPS, sngm_reference),
    "msgd": (torch.optim.SGD, dict(lr=0.1, momentum=0.8, weight_decay=0.0, foreach=True),
             ({"weight_decay": 0.05, "lr": 0.03}, {}), msgd_reference),
    "lars": (LARS, LARS_DEFAULTS, ({"weight_decay": 0.05}, {}), lars_reference),
    "lars-unadapted-group": (LARS, LARS_DEFAULTS, ({"weight_decay": 0.05, "lr": 0.3}, {"adapt": False}),
                             lars_reference),
    "lamb": (LAMB, LAMB_DEFAULTS, ({"weight_decay": 0.1}, {}), lamb_reference),
    "lamb-unadapted-clamped": (LAMB, LAMB_DEFAULTS, ({"weight_decay": 0.1, "max_trust_ratio": 0.9}, {"adapt": False}),
                               lamb_reference),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_float64_reference_with_two_groups(case):
    cls, defaults, group_options, reference = CASES[case]
    weights, grad_steps = make_problem(steps=7)
    params, _ = run(lambda groups: cls(groups, **defaults), weights, grad_steps, group_options)
    expected = reference(weights, grad_steps, options_per_tensor(defaults, group_options))
    for param, want in zip(params, expected):
        torch.testing.assert_close(param.detach(), want, rtol=1e-12, atol=1e-13)


COMPILABLE_CASES = [case for case, (cls, *_) in CASES.items() if issubclass(cls, CompilableOptimizer)]


def scheduled_steps(optimizer, params, grad_steps, after_first=nullcontext):
    """One step per entry of `grad_steps`, each at a new lr (a warmup schedule's, for every group),
    the steps after the first inside `after_first()`."""
    peaks = [group["lr"] for group in optimizer.param_groups]
    for i, grads in enumerate(grad_steps):
        for group, peak in zip(optimizer.param_groups, peaks):
            group["lr"] = peak * (i + 1) / len(grad_steps)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        with after_first() if i else nullcontext():
            optimizer.step()


@pytest.mark.parametrize("case", COMPILABLE_CASES)
def test_compiled_step_equals_the_eager_step_under_a_schedule_and_compiles_once(case):
    # torch.compile specializes on Python floats: a step that took the scheduled lr or LAMB's bias
    # corrections as floats would compile again at every step. Ours must compile once per group,
    # then never again; with the aot_eager backend it runs the eager kernels, so it must equal the
    # eager step to float64 rounding (inductor's own kernels: the next test, and test_gpu).
    cls, defaults, group_options, _ = CASES[case]
    weights, grad_steps = make_problem(steps=6)
    torch._dynamo.reset()
    results = []
    for backend in (None, "aot_eager"):
        params = [nn.Parameter(w.clone()) for w in weights]
        groups = [{"params": [params[i] for i in idx], **opts} for idx, opts in zip(GROUPS, group_options)]
        optimizer = cls(groups, **defaults, compile_backend=backend)
        scheduled_steps(optimizer, params, grad_steps,
                        lambda: torch._dynamo.config.patch(error_on_recompile=True))
        results.append(params)
    optimizer.load_state_dict(optimizer.state_dict())  # as a resumed run does
    assert optimizer.update is not optimizer.update_function, "a loaded state must keep the step compiled"
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled.detach(), eager.detach(), rtol=1e-12, atol=1e-13)


def test_each_optimizer_compiles_its_own_step_so_a_sweep_never_reaches_the_recompile_limit():
    # A Hydra sweep runs its runs in one process. Were the compiled graphs of all optimizers kept
    # together, torch's recompile limit (8) would make the step of the ninth setting run eagerly.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    runs = 10
    for run_index in range(runs):
        weights, grad_steps = make_problem(seed=run_index, steps=2)
        group_options = ({"weight_decay": 0.01 * (run_index + 1)}, {"adapt": False})
        run(lambda groups: LARS(groups, **LARS_DEFAULTS, compile_backend="aot_eager"), weights, grad_steps,
            group_options)
    assert counters["stats"]["unique_graphs"] == 2 * runs  # one per parameter group and run


def test_lamb_compiled_by_inductor_matches_the_float64_reference():
    cls, defaults, group_options, reference = CASES["lamb"]
    weights, grad_steps = make_problem(steps=3, dtype=torch.float32)
    torch._dynamo.reset()
    params, optimizer = run(lambda groups: cls(groups, **defaults, compile_backend="inductor"), weights, grad_steps,
                            group_options)
    expected = reference([w.double() for w in weights], [[g.double() for g in gs] for gs in grad_steps],
                         options_per_tensor(defaults, group_options))
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-5)
    restored = copy.deepcopy(optimizer)  # Optimizer's own pickling keeps only defaults, state and groups
    assert restored.compile_backend == "inductor" and restored.update is not restored.update_function
    assert restored.max_grad_norm is None and restored.state[restored.param_groups[0]["params"][0]]["step"] == 3


def test_lamb_global_gradient_clipping_matches_reference():
    weights, grad_steps = make_problem(steps=6)
    group_options = ({"weight_decay": 0.1}, {})
    make = lambda groups, clip: LAMB(groups, **LAMB_DEFAULTS, max_grad_norm=clip)  # noqa: E731
    clipped, _ = run(lambda groups: make(groups, 1.0), weights, grad_steps, group_options)
    unclipped, _ = run(lambda groups: make(groups, None), weights, grad_steps, group_options)
    expected = lamb_reference(weights, grad_steps, options_per_tensor(LAMB_DEFAULTS, group_options), max_grad_norm=1.0)
    for param, want in zip(clipped, expected):
        torch.testing.assert_close(param.detach(), want, rtol=1e-12, atol=1e-13)
    assert not torch.allclose(clipped[0], unclipped[0])  # the clip changed the moments, so the step
    below_threshold, _ = run(lambda groups: make(groups, 1e3), weights, grad_steps, group_options)
    assert all(torch.equal(a, b) for a, b in zip(below_threshold, unclipped))  # a clip, never a rescale upwards


def test_lamb_max_trust_ratio_clamps():
    weights, grad_steps = make_problem(steps=1)
    weights = [10 * w for w in weights]  # ||w|| >> ||r||: unclamped ratios far above 1
    params, _ = run(lambda groups: LAMB(groups, lr=0.01, max_trust_ratio=1.0), weights, grad_steps)
    free, _ = run(lambda groups: LAMB(groups, lr=0.01), weights, grad_steps)
    for p, f, w in zip(params, free, weights):
        # The first step of Adam moves each element by lr (|m_hat/sqrt(v_hat)| = 1), times the ratio.
        assert (p - w).abs().max() <= 0.01 * (1 + 1e-9)
        assert (f - w).abs().max() > 0.01 * 2


# Properties shared by all four, each optimizer as the factory's classes with plain arguments.
OPTIMIZERS = {
    "sngm": lambda params, lr: SNGM(params, lr=lr, momentum=0.9),  # torch's fused SGD kernel for float32
    "sngm-foreach": lambda params, lr: SNGM(params, lr=lr, momentum=0.9, fused=False),
    "msgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=True),
    "lars": lambda params, lr: LARS(params, lr=lr, momentum=0.9, trust_coefficient=0.02),
    "lamb": lambda params, lr: LAMB(params, lr=lr),
}


def rosenbrock(xy):
    return (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2


@pytest.mark.parametrize("name, lr", [("sngm", 0.002), ("msgd", 5e-4), ("lars", 0.05), ("lamb", 0.002)])
def test_closure_and_descent_on_rosenbrock(name, lr):
    # From (1.5, 3) the valley leads to the minimum (1, 1) away from the origin, where the steps of
    # LARS and LAMB (proportional to ||w||) would vanish.
    xy = nn.Parameter(torch.tensor([1.5, 3.0], dtype=torch.float64))
    optimizer = OPTIMIZERS[name]([xy], lr)

    def closure():
        optimizer.zero_grad()
        loss = rosenbrock(xy)
        loss.backward()
        return loss.detach()

    start = float(closure())
    losses = [float(optimizer.step(closure)) for _ in range(2000)]
    assert losses[0] == start  # step returns the closure's loss, evaluated before the update
    assert losses[-1] < start / 100


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_zero_gradient_and_zero_weights_stay_finite(name):
    params = [nn.Parameter(torch.zeros(3, 3)), nn.Parameter(torch.zeros(3)), nn.Parameter(torch.ones(2))]
    optimizer = OPTIMIZERS[name]([{"params": params, "weight_decay": 0.1}], 0.1)
    for p in params[:2]:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.equal(params[0].detach(), torch.zeros(3, 3)) and torch.equal(params[1].detach(), torch.zeros(3))
    params[0].grad = torch.ones(3, 3)  # zero weight, non-zero gradient
    params[1].grad = None  # parameters without gradient are skipped
    optimizer.step()
    assert torch.isfinite(params[0]).all() and params[0].abs().sum() > 0
    assert torch.equal(params[1].detach(), torch.zeros(3))
    assert torch.equal(params[2].detach(), torch.ones(2)) and not optimizer.state[params[2]]


def test_lars_moves_a_tensor_with_a_zero_gradient_by_its_weight_decay_at_lr():
    # A zero gradient (a frozen or dead layer) makes the ratio trust_coefficient * ||w|| / (wd * ||w||), here
    # 10: the decay would move the weights ten times as far as momentum SGD at lr does. The ratio is 1 instead.
    w = nn.Parameter(torch.ones(4, dtype=torch.float64))
    optimizer = LARS([w], lr=0.1, weight_decay=1e-4, trust_coefficient=1e-3)
    w.grad = torch.zeros_like(w)
    optimizer.step()
    torch.testing.assert_close(w.detach(), torch.full_like(w, 1 - 0.1 * 1e-4), rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_continues_exactly(name):
    weights, grad_steps = make_problem(steps=8, dtype=torch.float32)
    make = lambda groups: OPTIMIZERS[name]([{**g, "weight_decay": 0.01} for g in groups], 0.05)  # noqa: E731
    full, _ = run(make, weights, grad_steps)
    first, optimizer = run(make, weights, grad_steps[:4])
    saved_state = copy.deepcopy(optimizer.state_dict())
    params = [nn.Parameter(p.detach().clone()) for p in first]
    groups = [{"params": [params[i] for i in idx]} for idx in GROUPS]
    resumed_optimizer = make(groups)
    resumed_optimizer.load_state_dict(saved_state)
    for grads in grad_steps[4:]:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        resumed_optimizer.step()
    for a, b in zip(full, params):
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["sngm", "msgd", "lars", "lamb"])
def test_float32_and_bfloat16_parameters(case, dtype):
    cls, defaults, group_options, reference = CASES[case]
    weights, grad_steps = make_problem(steps=3, dtype=dtype)
    params, optimizer = run(lambda groups: cls(groups, **defaults), weights, grad_steps, group_options)
    expected = reference([w.double() for w in weights], [[g.double() for g in gs] for gs in grad_steps],
                         options_per_tensor(defaults, group_options))
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for p, e in zip(params, expected):
        assert p.dtype == dtype and all(s.dtype == dtype for s in optimizer.state[p].values() if torch.is_tensor(s))
        torch.testing.assert_close(p.detach().double(), e, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_reads_nothing_back_to_the_host(name, monkeypatch):
    weights, grad_steps = make_problem(steps=2, dtype=torch.float32)

    def host_sync(*args):
        raise AssertionError("step() read a tensor value on the host")

    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, method, host_sync)
    run(lambda groups: OPTIMIZERS[name](groups, 0.1), weights, grad_steps)


# SNGM's defining property.

def test_sngm_one_norm_over_all_groups_not_per_group():
    weights, grad_steps = make_problem(steps=1)
    params, _ = run(lambda groups: SNGM(groups, lr=1.0, momentum=0.0), weights, grad_steps)
    step = torch.cat([(w - p.detach()).flatten() for w, p in zip(weights, params)])
    # One normalized step has unit length overall; per-group norms would give sqrt(2).
    assert float(step.norm()) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("case", ["sngm", "sngm-decoupled", "sngm-layer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_sngm_takes_torchs_fused_sgd_kernel_for_the_global_norm_in_float32_and_below(case, dtype, monkeypatch):
    calls, fused_sgd = [], sngm_module.sgd

    def counted_sgd(*args, **kwargs):
        calls.append(kwargs)
        return fused_sgd(*args, **kwargs)

    monkeypatch.setattr(sngm_module, "sgd", counted_sgd)
    cls, defaults, group_options, reference = CASES[case]
    weights, grad_steps = make_problem(steps=3, dtype=dtype)
    for fused in (True, False):
        calls.clear()
        params, _ = run(lambda groups: cls(groups, **defaults, fused=fused), weights, grad_steps, group_options)
        fusable = fused and defaults["norm"] == "global" and dtype != torch.float64
        assert len(calls) == (3 * len(GROUPS) if fusable else 0) and all(call["fused"] for call in calls)
        expected = reference([w.double() for w in weights], [[g.double() for g in gs] for gs in grad_steps],
                             options_per_tensor(defaults, group_options))
        tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach().double(), e, rtol=tol, atol=tol)


def test_sngm_state_saved_before_the_fused_option_loads_as_fused():
    weights, grad_steps = make_problem(steps=2, dtype=torch.float32)
    _, optimizer = run(lambda groups: SNGM(groups, lr=0.1), weights, grad_steps)
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        del group["fused"]
    params = [nn.Parameter(w.clone()) for w in weights]
    resumed = SNGM([{"params": [params[i] for i in idx]} for idx in GROUPS], lr=0.1, fused=False)
    resumed.load_state_dict(state)
    assert [group["fused"] for group in resumed.param_groups] == [True] * len(GROUPS)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["foreach-form", "fused-form"])
def test_sngm_step_length_never_exceeds_lr_over_one_minus_momentum(dtype):
    weights, grad_steps = make_problem(steps=60, dtype=dtype)
    params = [nn.Parameter(w.clone()) for w in weights]
    optimizer = SNGM(params, lr=0.2, momentum=0.9)
    longest = 0.0
    for grads in grad_steps:
        before = [p.detach().double().clone() for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone() * 0.01  # scale-free: the gradient's size must not matter
        optimizer.step()
        longest = max(longest, math.sqrt(sum(float(((p.detach().double() - b) ** 2).sum())
                                             for p, b in zip(params, before))))
    assert longest <= 0.2 / (1 - 0.9) * (1 + (1e-9 if dtype == torch.float64 else 1e-5))
    assert longest > 0.2  # momentum does lengthen the step


# The factory and its exclusion switches.

def small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 2))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1:
                p.uniform_(0.5, 1.5)  # non-zero biases and BN parameters, so that decay would move them
    return model


def test_parameter_groups_split_by_kind_and_merge_equal_settings():
    model = small_model()
    decayed, undecayed = parameter_groups(model, 5e-4, decay_norm_and_bias=False)
    assert decayed["weight_decay"] == 5e-4 and undecayed["weight_decay"] == 0.0
    assert [p.ndim for p in decayed["params"]] == [4, 2] and "adapt" not in decayed
    assert sorted(p.ndim for p in undecayed["params"]) == [1, 1, 1, 1]
    (everything,) = parameter_groups(model, 5e-4, decay_norm_and_bias=True)
    assert len(everything["params"]) == 6

    weights, vectors = parameter_groups(model, 5e-4, decay_norm_and_bias=True, adapt_norm_and_bias=False)
    assert (weights["adapt"], vectors["adapt"]) == (True, False) and vectors["weight_decay"] == 5e-4
    (everything,) = parameter_groups(model, 5e-4, decay_norm_and_bias=True, adapt_norm_and_bias=True)
    assert everything["adapt"] and len(everything["params"]) == 6


def factory_optimizer(name, model, *overrides):
    cfg = compose_config([f"optimizer={name}", *overrides]).optimizer
    return build_optimizer(cfg, model, lr=cfg.lr), cfg


def test_factory_builds_all_four_with_their_defaults():
    model = small_model()
    for name, cls in [("sngm", SNGM), ("msgd", torch.optim.SGD), ("lars", LARS), ("lamb", LAMB)]:
        optimizer, cfg = factory_optimizer(name, model)
        assert type(optimizer) is cls
        assert [g["weight_decay"] for g in optimizer.param_groups] == [cfg.weight_decay, 0.0]
        adapted = [True, False] if name in ("lars", "lamb") else [None, None]
        assert [g.get("adapt") for g in optimizer.param_groups] == adapted
    msgd, _ = factory_optimizer("msgd", model)
    assert msgd.defaults["momentum"] == 0.9 and not msgd.defaults["nesterov"]
    lamb, _ = factory_optimizer("lamb", model)
    assert lamb.max_grad_norm is None and lamb.defaults["max_trust_ratio"] is None


@pytest.mark.parametrize("name", ["sngm", "msgd", "lars", "lamb"])
@pytest.mark.parametrize("decay", [False, True])
def test_decay_norm_and_bias_switch(name, decay):
    """With a zero gradient only weight decay moves a parameter: biases and BN parameters move
    exactly when decay_norm_and_bias says so, conv and linear weights always."""
    model = small_model()
    optimizer, _ = factory_optimizer(name, model, f"optimizer.decay_norm_and_bias={decay}")
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p, b in zip(model.parameters(), before):
        assert (not torch.equal(p.detach(), b)) == (p.ndim > 1 or decay), (p.shape, decay)


@pytest.mark.parametrize("adapt", [False, True])
def test_lars_adapt_norm_and_bias_switch(adapt):
    model = small_model()
    optimizer, cfg = factory_optimizer("lars", model, f"optimizer.adapt_norm_and_bias={adapt}")
    bn_weight = model[1].weight
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = bn_weight.detach().clone()
    optimizer.step()
    trust = cfg.trust_coefficient * before.norm() / bn_weight.grad.norm() if adapt else 1.0
    torch.testing.assert_close(before - bn_weight.detach(), cfg.lr * trust * bn_weight.grad)


@pytest.mark.parametrize("name, plain", [
    ("lars", lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)),
    ("lamb", lambda params, lr: torch.optim.Adam(params, lr=lr, eps=1e-6)),
])
def test_unadapted_groups_are_the_base_optimizer(name, plain):
    """Excluded from adaptation (and from decay), biases and BN parameters move exactly as under
    SGD-momentum (LARS) or Adam (LAMB) at the same lr: torch's own implementations."""
    model = small_model()
    optimizer, cfg = factory_optimizer(name, model)
    vectors = [p for p in model.parameters() if p.ndim <= 1]
    copies = [nn.Parameter(p.detach().clone()) for p in vectors]
    reference = plain(copies, cfg.lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        for p, c in zip(vectors, copies):
            c.grad = p.grad.clone()
        optimizer.step()
        reference.step()
    for p, c in zip(vectors, copies):
        torch.testing.assert_close(p.detach(), c.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.momentum=1.5"], "optimizer.momentum=1.5 must be in [0, 1)"),
    (["optimizer=msgd", "optimizer.momentum=-0.1"], "optimizer.momentum=-0.1 must be in [0, 1)"),
    (["optimizer=lamb", "optimizer.beta2=1.0"], "optimizer.beta2=1.0 must be in [0, 1)"),
    (["optimizer=lars", "optimizer.weight_decay=-1"], "optimizer.weight_decay=-1.0 must be non-negative"),
    (["optimizer=lars", "optimizer.trust_coefficient=0"], "optimizer.trust_coefficient=0.0 must be positive"),
    (["optimizer=lamb", "optimizer.max_grad_norm=0"], "optimizer.max_grad_norm=0.0 must be positive"),
    (["optimizer.norm=tensor"], "optimizer.norm='tensor' must be one of global, layer"),
    (["optimizer.weight_decay_mode=adamw"], "optimizer.weight_decay_mode='adamw' must be one of l2, decoupled"),
])
def test_bad_hyperparameters_name_their_key(overrides, message):
    cfg = compose_config(overrides).optimizer
    with pytest.raises(UserError) as err:
        build_optimizer(cfg, small_model(), lr=0.1)
    assert str(err.value) == message


def test_step_benchmark_times_every_optimizer_against_sgd():
    from sngm_bench.optim.benchmark import bench_optimizers

    rows = bench_optimizers(["resnet20"], steps=3, warmup=1, device="cpu", compile_backend="aot_eager")
    assert [r["optimizer"] for r in rows] == ["sgd_foreach", "msgd", "sngm", "lars", "lamb", "sngm_foreach",
                                              "sngm+compile", "lars+compile", "lamb+compile"]
    assert rows[0]["vs_sgd_foreach"] == 1.0 and all(r["median_ms"] > 0 and r["warmup_ms"] > 0 for r in rows)
    assert all(0 < r["host_ms"] <= r["median_ms"] for r in rows)  # returning precedes the device's end
    assert all(r["kernel_ms"] is None and r["kernel_vs_sgd_fused"] is None for r in rows)  # a CPU runs no kernels
    assert rows[0]["parameters"] == sum(p.numel() for p in CifarResNet(20).parameters()) and rows[0]["torch"]


def test_a_kernel_time_the_profiler_missed_prints_as_n_a():
    # On a GPU whose profiler records no kernels, fused SGD's kernel time is 0 and every ratio to it None.
    from sngm_bench.optim.benchmark import format_table

    row = {"device": "GPU", "torch": "2", "steps": 3, "parameter_set": "resnet20", "parameters": 272474,
           "tensors": 59, "weight_decay": 0.0, "optimizer": "sngm", "median_ms": 0.36, "vs_sgd_fused": 2.24,
           "host_ms": 0.35, "warmup_ms": 20.0, "kernel_ms": 0.0, "kernel_vs_sgd_fused": None}
    measured = format_table([{**row, "kernel_vs_sgd_fused": 1.25}]).splitlines()[-1]
    missed = format_table([row]).splitlines()[-1]
    assert measured.split()[-2:] == ["0.000", "1.25x"] and missed.split()[-2:] == ["0.000", "n/a"]
    assert len(missed) == len(measured)
