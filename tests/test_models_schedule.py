"""CIFAR ResNets (He et al. 2016) and the learning-rate schedule."""

import math
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from sngm_bench.config import compose_config
from sngm_bench.errors import UserError
from sngm_bench.models import build_model
from sngm_bench.models.cifar_resnet import BasicBlock, CifarResNet
from sngm_bench.schedule import build_scheduler, lr_multiplier, peak_lr


@pytest.mark.parametrize("depth, params", [(20, 269_722), (32, 464_154), (56, 853_018)])
def test_cifar_resnet_parameter_counts_match_the_paper(depth, params):
    # He et al. 2016, Table 6: 0.27M, 0.46M, 0.85M parameters (option A shortcuts have none).
    model = CifarResNet(depth)
    assert sum(p.numel() for p in model.parameters()) == params
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) + 1 == depth  # convs + the fc layer


def test_cifar_resnet_shapes_and_zero_padding_shortcut():
    model = CifarResNet(8, width=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    block = BasicBlock(4, 8, stride=2)
    x = torch.randn(1, 4, 8, 8)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (1, 8, 4, 4)
    assert torch.equal(shortcut[:, :4], x[:, :, ::2, ::2]) and not shortcut[:, 4:].any()


def test_models_from_config():
    assert isinstance(build_model(compose_config(["model=resnet110"]).model, 10), CifarResNet)
    resnet50 = build_model(compose_config(["model=resnet50"]).model, 1000)
    assert sum(p.numel() for p in resnet50.parameters()) == 25_557_032  # torchvision's ResNet-50
    # The schema's zero_init_residual is a ResNet's argument: another model is refused by name, not a TypeError.
    with pytest.raises(UserError, match="model.arch=mobilenet_v2 is not one of torchvision's ResNets"):
        build_model(compose_config(["model=resnet50", "model.arch=mobilenet_v2"]).model, 10)


def schedule_cfg(*overrides):
    return compose_config([f"schedule.{o}" for o in overrides]).schedule


def test_warmup_is_linear_then_each_decay_has_its_shape():
    poly = schedule_cfg("decay=poly", "power=2")
    factors = [lr_multiplier(s, total_steps=110, warmup_steps=10, cfg=poly) for s in range(110)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == 1.0 and factors[60] == pytest.approx(0.25)
    cosine = schedule_cfg("decay=cosine")
    assert lr_multiplier(60, 110, 10, cosine) == pytest.approx(0.5)
    assert lr_multiplier(10, 110, 10, schedule_cfg("decay=constant")) == lr_multiplier(109, 110, 10, schedule_cfg("decay=constant")) == 1
    step = schedule_cfg("decay=step", "milestones=[0.5,0.75]", "gamma=0.1")
    assert [lr_multiplier(s, 100, 0, step) for s in (49, 50, 74, 75)] == pytest.approx([1, 0.1, 0.1, 0.01])


def optimizer_cfg(*overrides):
    return compose_config(["optimizer=msgd", "optimizer.lr=0.1", *(f"optimizer.{o}" for o in overrides)]).optimizer


def test_peak_lr_scaling_rules():
    assert peak_lr(optimizer_cfg("scaling=linear", "base_batch_size=128"), 1024) == pytest.approx(0.8)
    assert peak_lr(optimizer_cfg("scaling=sqrt", "base_batch_size=128"), 512) == pytest.approx(0.2)
    assert peak_lr(optimizer_cfg("scaling=none"), 8192) == 0.1
    assert peak_lr(optimizer_cfg("scaling=sqrt", "base_batch_size=128"), 512, lr_factor=0.5) == pytest.approx(0.1)


def test_each_optimizer_states_its_own_scaling_rule():
    rules = {name: compose_config([f"optimizer={name}"]).optimizer.scaling.name for name in ("msgd", "sngm", "lars", "lamb")}
    assert rules == {"msgd": "linear", "sngm": "sqrt", "lars": "linear", "lamb": "sqrt"}


def test_scheduler_steps_the_optimizer_lr_per_step():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.4)
    sched = build_scheduler(opt, schedule_cfg("decay=cosine", "warmup_epochs=1"), steps_per_epoch=4, epochs=3)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert lrs[4:] == pytest.approx([0.4 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])


def test_a_warmup_as_long_as_the_run_is_warned_of(caplog):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    build_scheduler(opt, schedule_cfg("decay=poly", "warmup_epochs=5"), steps_per_epoch=4, epochs=3)
    assert "schedule.warmup_epochs=5 is not shorter than the run (epochs=3)" in caplog.text and "no poly decay" in caplog.text
    caplog.clear()
    build_scheduler(opt, schedule_cfg("decay=constant", "warmup_epochs=5"), steps_per_epoch=4, epochs=3)
    assert caplog.text.rstrip().endswith("reaches its peak only at the last step")  # no decay to speak of
    caplog.clear()
    build_scheduler(opt, schedule_cfg("decay=poly", "warmup_epochs=2"), steps_per_epoch=4, epochs=3)
    assert caplog.text == ""


@pytest.mark.parametrize("override, message", [
    ("power=-1", "schedule.power=-1.0 must be non-negative"),  # was a ZeroDivisionError at the last step
    ("gamma=0", "schedule.gamma=0.0 must be positive"),  # was an LR of zero after the first milestone
    ("milestones=[100,150]", "schedule.milestones=[100.0, 150.0] must be fractions of training"),  # epochs: no decay
])
def test_schedule_values_that_would_train_otherwise_than_meant_are_refused(override, message):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    with pytest.raises(UserError, match=re.escape(message)):
        build_scheduler(opt, schedule_cfg("decay=step", override), steps_per_epoch=4, epochs=3)


def scheduled_lrs(cfg, steps_per_epoch: int, epochs: int) -> list[float]:
    """The LR of every optimizer step of a run, as a fraction of the peak."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, epochs)
    lrs = []
    for _ in range(steps_per_epoch * epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_lasts_the_nearest_whole_step_and_a_run_shorter_than_it_still_reaches_the_peak():
    # 0.7 epochs of 5 steps: 3.5, so 4 warmup steps, then the decay.
    assert scheduled_lrs(schedule_cfg("decay=constant", "warmup_epochs=0.7"), 5, 2)[:5] == \
        pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    # A run of 2 epochs with the paper's 5 warmup epochs (a quick trial of its recipe) warms up over the
    # whole run: its last step is at the peak LR, not at 2/5 of it.
    assert scheduled_lrs(schedule_cfg("decay=poly", "warmup_epochs=5"), 4, 2) == pytest.approx([k / 8 for k in range(1, 9)])


def test_a_cifar_run_builds_its_data_and_model_without_importing_torchvision(cifar_root):
    # torchvision (with the torch._dynamo it imports) adds seconds to every start, and to every error
    # found while building; only ImageNet's data and models need it. In a fresh process: this one has it.
    code = ("import sys, torch\n"
            "from sngm_bench.config import compose_config\n"
            "from sngm_bench.data import build_data\n"
            "from sngm_bench.models import build_model\n"
            "from sngm_bench.train import train\n"
            f"cfg = compose_config(['experiment=smoke', 'dataset.subset=100', 'dataset.root={cifar_root}'])\n"
            "build_model(cfg.model, build_data(cfg.dataset, torch.device('cpu')).num_classes)\n"
            "print(sorted(name for name in sys.modules if name.split('.')[0] == 'torchvision'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
