"""The gradient noise scale: its estimator against a closed form, and its measurement in real runs."""

import json

import pandas as pd
import pytest
import torch

from conftest import run_cli
from sngm_bench.config import check_values, compose_config
from sngm_bench.distributed import Processes
from sngm_bench.errors import UserError
from sngm_bench.noise_scale import NoiseScale

CPU = torch.device("cpu")


def test_least_squares_noise_scale_matches_its_closed_form():
    # Least squares l(w) = (x.w - y)^2 / 2 with x ~ N(0, I_d), y = x.w* + eps, eps ~ N(0, s^2), at
    # w = w* + delta. The per-example gradient is x (x.delta - eps), so G = delta and
    # Sigma = (|delta|^2 + s^2) I + delta delta^T (Gaussian fourth moments): B_simple is
    # (d (|delta|^2 + s^2) + |delta|^2) / |delta|^2. The step below is train_step's accumulation
    # (each micro-batch's mean loss weighted by its share), with the probe where train_step calls it.
    torch.manual_seed(0)
    d, s, batch, micro = 100, 1.0, 800, 200
    model = torch.nn.Linear(d, 1, bias=False)
    w_star, delta = torch.randn(d), torch.randn(d)
    delta /= delta.norm()
    with torch.no_grad():
        model.weight.copy_(w_star + delta)
    noise = NoiseScale(1, batch, batch, model.parameters(), CPU)
    for step in range(1, 1001):
        x = torch.randn(batch, d)
        y = x @ w_star + s * torch.randn(batch)
        model.zero_grad(set_to_none=True)
        probe = noise.probe(step)
        size = probe.micro_batch_size(batch, micro)
        for i, (xm, ym) in enumerate(zip(x.split(size), y.split(size))):
            share = len(ym) / batch
            (0.5 * (model(xm).squeeze(1) - ym).square().mean() * share).backward()
            if i == 0:
                probe.small(len(ym), share)
        probe.big()
    expected = d * (1 + s**2) + 1
    assert noise.measurements == 1000
    assert noise.read(Processes(0, 1, CPU)) == pytest.approx(expected, rel=0.1)


def test_measured_steps_and_their_micro_batches():
    noise = NoiseScale(3, 100, 100, [], CPU)
    assert [step for step in range(1, 10) if noise.probe(step)] == [3, 6, 9]
    assert NoiseScale(None, 100, 100, [], CPU).probe(3) is None  # off
    assert NoiseScale.micro_batch_size(100, 100) == 50  # one micro-batch: split in two
    assert NoiseScale.micro_batch_size(101, 101) == 51
    assert NoiseScale.micro_batch_size(100, 25) == 25  # accumulation: kept
    assert noise.read(Processes(0, 1, CPU)) is None  # nothing measured yet


@pytest.mark.parametrize("small, big", [(0.5, 2.0), (2.0, 1.0)], ids=["trace-negative", "gradient-negative"])
def test_no_noise_scale_while_an_estimate_is_not_positive(small, big):
    # With few measurements the noise can outweigh the signal: the big batch's gradient the longer (a negative
    # tr(Σ) estimate), or the small one's so much longer that |G|²'s estimate is negative. Their ratio, a
    # negative "batch size", is not reported.
    p = torch.nn.Parameter(torch.zeros(3))
    noise = NoiseScale(1, 100, 100, [p], CPU)
    p.grad = torch.full((3,), small * 0.5)  # the first micro-batch of 50 images, its loss weighted by 0.5
    noise.small(50, 0.5)
    p.grad = torch.full((3,), big)
    noise.big()
    assert noise.measurements == 1 and noise.read(Processes(0, 1, CPU)) is None


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="noise_scale_every=0 must be a positive integer or null"):
        check_values(compose_config(["noise_scale_every=0"]))
    with pytest.raises(UserError, match="at least 2 images per process"):
        NoiseScale(1, 2, 1, [], CPU)


def test_with_accumulation_measuring_changes_nothing_else(tmp_path, cifar_root):
    # With two micro-batches per step the probe only reads gradients: the run trains exactly as
    # without it, and records B_simple per epoch (empty while too few measurements leave an
    # average unresolved) and its final value.
    result = run_cli(["-m", "experiment=smoke", "model.width=4", "dataset.subset=400", "epochs=1", "batch_size=100",
                      "micro_batch_size=50", "noise_scale_every=null,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                     cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0, result.stderr[-3000:]
    (off,) = (tmp_path / "sweep").glob("*noise_scale_every=null*")
    (on,) = (tmp_path / "sweep").glob("*noise_scale_every=1*")
    metrics = {run: pd.read_csv(run / "metrics.csv") for run in (off, on)}
    for column in ["train_loss", "train_acc", "test_loss", "test_acc", "lr"]:
        assert metrics[on][column].tolist() == metrics[off][column].tolist()
    assert metrics[off]["noise_scale"].isna().all()
    noise_scale = metrics[on]["noise_scale"]
    assert noise_scale.notna().any() and (noise_scale.dropna() > 0).all()
    final = json.loads((on / "summary.json").read_text())["noise_scale"]
    assert final is None if pd.isna(noise_scale.iloc[-1]) else final == noise_scale.iloc[-1]
    assert json.loads((off / "summary.json").read_text())["noise_scale"] is None
