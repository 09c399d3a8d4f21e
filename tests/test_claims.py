"""claims.md and the steps-to-target figure: the verdict logic on hand-made run folders whose answer
is known, its statistics against tables, and a real tiny sweep's report."""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from sngm_bench import claims, report
from sngm_bench.errors import UserError

REPORT_CLI = str(Path(sys.executable).with_name("sngm-bench-report"))


@pytest.mark.parametrize("p, df, expected", [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 10, 2.2281),
                                             (0.95, 5, 2.0150), (0.975, 1e6, 1.9600)])
def test_t_quantiles_match_the_tables(p, df, expected):
    assert claims.t_quantile(p, df) == pytest.approx(expected, abs=2e-4)


def test_t_quantile_at_real_degrees_of_freedom_integrates_to_its_level():
    # Welch's df are real: the density of t(2.5) integrated (Simpson) over +-t_0.975 is 0.95.
    df = 2.5
    q = claims.t_quantile(0.975, df)
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    def density(t):
        return scale * (1 + t * t / df) ** (-(df + 1) / 2)
    n = 2000
    h = 2 * q / n
    total = density(-q) + density(q) + sum((4 if i % 2 else 2) * density(-q + i * h) for i in range(1, n))
    assert total * h / 3 == pytest.approx(0.95, abs=1e-6)


def test_welch_interval_by_hand():
    margin = claims.welch([3.0, 5.0], [1.0, 2.0, 3.0])  # means 4 and 2; s^2 = 2 and 1
    se2 = 2 / 2 + 1 / 3
    df = se2**2 / ((2 / 2) ** 2 / 1 + (1 / 3) ** 2 / 2)
    half = claims.t_quantile(0.975, df) * se2**0.5
    assert (margin.diff, margin.low, margin.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert str(claims.welch([3.0], [1.0, 2.0])) == "+1.50, not resolved with 1 and 2 seeds"


@pytest.mark.parametrize("a, b, low, high", [
    # SciPy 1.17 stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95), an independent implementation.
    ([91.2, 90.4, 90.9], [89.1, 88.2], -0.7227856, 5.0894522),
    ([90.0, 90.0], [88.0, 89.0, 90.0], -1.4841377, 3.4841377),  # one side without spread: df = 3 - 1
])
def test_welch_interval_matches_scipy(a, b, low, high):
    margin = claims.welch(a, b)
    assert (margin.low, margin.high) == pytest.approx((low, high), abs=1e-6)


def test_seeds_that_agree_exactly_give_no_interval(tmp_path):
    # Two seeds a cell, identical to the last digit: a spread of 0 is no evidence that SNGM's 0.01-point lead is
    # certain, so the claim must not be supported on a zero-width interval.
    for lr, (sngm, msgd) in {0.05: (80.0, 80.0), 0.1: (85.01, 85.0), 0.2: (80.0, 80.0)}.items():
        make_run(tmp_path, "sngm", 4096, [sngm, sngm], "global", lr)
        make_run(tmp_path, "msgd", 4096, [msgd, msgd], lr=lr)
    found, text = verdicts(tmp_path)
    assert found[0] == "not resolved", text
    assert "SNGM − msgd (85.00, n=2): +0.01, not resolved: the seeds agree exactly on both sides" in text


def make_run(root: Path, optimizer: str, batch_size: int, accs: list[float], norm: str | None = None,
             lr: float = 0.1, status: str = "completed", warmup_epochs: int = 5,
             holdout_accs: list[float] | None = None) -> None:
    """One folder per seed, as sngm-bench writes them (config and summary only), final accuracy in % (and on
    held-out training images, when given)."""
    for seed, acc in enumerate(accs):
        run_dir = root / f"{optimizer}-{norm}-{batch_size}-lr{lr:g}-warmup{warmup_epochs}-{seed}"
        (run_dir / ".hydra").mkdir(parents=True)
        optim = {"name": optimizer, "lr": lr, "momentum": 0.9, "weight_decay": 5e-4}
        config = {"name": "hand", "dataset": {"name": "cifar10", "subset": None}, "model": {"name": "resnet20"},
                  "optimizer": {**optim, **({"norm": norm} if optimizer == "sngm" else {})},
                  "schedule": {"decay": "poly", "warmup_epochs": warmup_epochs}, "batch_size": batch_size,
                  "epochs": 200, "seed": seed}
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        summary = {"final_test_acc": acc / 100, "best_test_acc": acc / 100, "final_train_loss": 0.1}
        if holdout_accs is not None:
            config["dataset"]["holdout_images"] = 5000
            (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
            summary.update(final_holdout_acc=holdout_accs[seed] / 100, holdout_images=5000)
        (run_dir / "summary.json").write_text(json.dumps({"status": status, **(summary if status == "completed" else {})}))


def test_a_mean_reads_the_same_in_claims_as_in_the_table(tmp_path):
    # Seeds at 33.46 and 33.83 % average to 33.645: one number, which claims.md must round as the table does.
    make_run(tmp_path, "sngm", 512, [33.46, 33.83], "global")
    make_run(tmp_path, "msgd", 512, [31.81, 32.80])
    runs = report.collect_runs([tmp_path])
    cells = report.aggregate(runs)
    table, text = report.to_markdown(report.accuracy_table(cells)), claims.verdict(runs, cells, "final_test_acc")
    shown = re.search(r"\| sngm \| (\d+\.\d\d) ± ", table).group(1)
    assert f"| 512 | sngm {shown} (n=2, one LR) |" in text, (table, text)


def test_a_cell_says_how_many_seeds_at_its_lr_did_not_complete(tmp_path):
    # Its mean is over the seeds that completed: the seed that diverged must show beside it.
    make_run(tmp_path, "sngm", 512, [33.46, 33.83, 50.0], "global")
    make_run(tmp_path, "msgd", 512, [31.81, 32.80])
    (tmp_path / "sngm-global-512-lr0.1-warmup5-2" / "summary.json").write_text(json.dumps({"status": "diverged"}))
    runs = report.collect_runs([tmp_path])
    text = claims.verdict(runs, report.aggregate(runs), "final_test_acc")
    assert "| 512 | sngm 33.65 (n=2, diverged 1, one LR) |" in text, text
    assert "msgd 32.30 (n=2, one LR)" in text, text


def test_the_table_caption_counts_one_run_as_one_run(tmp_path):
    make_run(tmp_path, "sngm", 512, [33.5], "global")
    runs = report.collect_runs([tmp_path])
    assert ", 1 run; runs that did not complete" in report.caption(runs, report.aggregate(runs), "final_test_acc")
    make_run(tmp_path, "msgd", 512, [32.5])
    runs = report.collect_runs([tmp_path])
    assert ", 2 runs; runs that did not complete" in report.caption(runs, report.aggregate(runs), "final_test_acc")


def seeds(mean: float) -> list[float]:
    return [mean - 0.1, mean, mean + 0.1]


def verdicts(root: Path) -> list[str]:
    runs = report.collect_runs([root])
    text = claims.verdict(runs, report.aggregate(runs), "final_test_acc", within=1.0)
    return re.findall(r"^\d\. \*\*.*: (supported|not supported|not resolved)\.\*\*$", text, re.M), text


def make_three_arms(root: Path, cells: list[tuple[int, float, float, float]]) -> None:
    """Runs of SNGM (global norm), SNGM (layer norm) and MSGD: (batch size, sngm, msgd, layer) mean accuracies,
    each at lr 0.1, bracketed by 0.05 and 0.2 five points worse."""
    for batch_size, sngm, msgd, layer in cells:
        for lr, worse in ((0.05, 5.0), (0.1, 0.0), (0.2, 5.0)):
            make_run(root, "sngm", batch_size, seeds(sngm - worse), "global", lr)
            make_run(root, "sngm", batch_size, seeds(layer - worse), "layer", lr)
            make_run(root, "msgd", batch_size, seeds(msgd - worse), lr=lr)


def test_claims_that_hold(tmp_path):
    # SNGM wins clearly at the largest batch, keeps its accuracy to 1024 where MSGD's drops after
    # 128, and per-tensor normalization is 2 points worse everywhere.
    make_three_arms(tmp_path, [(128, 92.0, 92.2, 90.0), (1024, 91.5, 89.0, 89.5), (4096, 85.0, 80.0, 83.0)])
    found, text = verdicts(tmp_path)
    assert found == ["supported"] * 3, text
    assert "| 128 | msgd 92.20 (n=3) | sngm optimizer.norm=global 92.00 (n=3) | +0.20 [" in text
    assert "| 128 |" in text and "(best) |" in text
    assert "Largest batch that keeps it: SNGM 1024, MSGD 128 " in text
    assert "SNGM keeps its best accuracy at batch 1024, where MSGD is shown to lose its own." in text
    assert "MSGD (the paper proves it for convergence to an ε-stationary point; judged here by test accuracy)" in text
    assert "sngm optimizer.norm=layer" in text and "`sngm-layer-4096-lr0.1-warmup5-2`" in text


def test_claims_that_fail_are_said_to_fail(tmp_path):
    make_three_arms(tmp_path, [(128, 92.0, 92.2, 90.0), (1024, 89.0, 91.5, 89.5), (4096, 80.0, 85.0, 83.0)])
    found, text = verdicts(tmp_path)
    assert found == ["not supported"] * 3, text
    assert "The claim fails: at batch 4096, SNGM is not better than msgd." in text
    assert "The claim fails: MSGD keeps its best accuracy at batch 1024, where SNGM is shown to lose its own." in text
    assert "The claim fails: block-wise normalization helps at batch 1024, 4096." in text


def test_claims_without_enough_runs_are_not_resolved(tmp_path):
    # One seed per cell; both optimizers within 1 point up to the largest batch; no norm=layer runs.
    for batch_size, sngm, msgd in [(128, 92.0, 91.0), (1024, 91.5, 90.5)]:
        make_run(tmp_path, "sngm", batch_size, [sngm], "global")
        make_run(tmp_path, "msgd", batch_size, [msgd])
    found, text = verdicts(tmp_path)
    assert found == ["not resolved"] * 3, text
    assert "SNGM − msgd (90.50, n=1): +1.00, not resolved with 1 seed" in text
    assert "(on means alone, noise aside: SNGM 1024, MSGD 1024)" in text
    assert "these seeds do not show whether it is kept by SNGM at batch 1024, MSGD at batch 1024" in text
    assert "No batch size has completed runs of SNGM with both optimizer.norm=layer and global." in text


def make_grid(root: Path, optimizer: str, batch_size: int, means_by_lr: dict[float, float],
              norm: str | None = None) -> None:
    """Three seeds of `optimizer` at each LR of a grid, around the given mean accuracies."""
    for lr, mean in means_by_lr.items():
        make_run(root, optimizer, batch_size, seeds(mean), norm, lr)


def test_a_lead_over_an_lr_at_the_grid_edge_is_not_resolved(tmp_path):
    # SNGM leads MSGD by 5 points at batch 4096, but MSGD's best LR is the smallest it tried.
    make_run(tmp_path, "sngm", 4096, seeds(85.0), "global")
    make_grid(tmp_path, "msgd", 4096, {0.05: 80.0, 0.1: 78.0, 0.2: 70.0})
    found, text = verdicts(tmp_path)
    assert found[0] == "not resolved", text
    assert "| msgd 80.00 (n=3, grid edge) |" in text
    assert ("msgd at batch 4096: its selected LR (optimizer.lr x lr_factor) 0.05 is the smallest tried, so its "
            "best LR may lie outside the grid: extend the grid to smaller LRs.") in text
    assert "more seeds are needed" not in text.split("2. **")[0]
    # The run list names the LR as the caution does: not the peak LR the runs trained at (scaled to the batch).
    assert "| series | batch | optimizer.lr x lr_factor | folders |" in text and "| msgd | 4096 | 0.05 | `" in text
    # A smaller LR that does worse brackets the same best LR: the lead now stands.
    make_run(tmp_path, "msgd", 4096, seeds(75.0), lr=0.025)
    found, text = verdicts(tmp_path)
    assert found[0] == "supported", text


def test_a_loss_at_the_grid_edge_is_not_resolved(tmp_path):
    # MSGD beats SNGM by 5 points, but SNGM's best LR is the largest it tried.
    make_grid(tmp_path, "sngm", 4096, {0.05: 70.0, 0.1: 78.0, 0.2: 80.0}, "global")
    make_run(tmp_path, "msgd", 4096, seeds(85.0))
    found, text = verdicts(tmp_path)
    assert found[0] == "not resolved", text
    assert "sngm at batch 4096: its selected LR (optimizer.lr x lr_factor) 0.2 is the largest tried" in text
    assert "extend the grid to larger LRs" in text and "The claim fails: at batch 4096" not in text


@pytest.mark.parametrize("layer_grid, global_grid, verdict, edge", [
    # Layer is 2 points worse, but its best LR is the largest tried: it might catch up beyond the grid.
    ({0.05: 80.0, 0.1: 83.0}, {0.1: 85.0}, "not resolved", "sngm optimizer.norm=layer at batch 1024"),
    ({0.05: 80.0, 0.1: 83.0, 0.2: 82.0}, {0.1: 85.0}, "supported", None),
    # Layer is 2 points better, but global's best LR is the smallest tried.
    ({0.1: 87.0}, {0.1: 85.0, 0.2: 80.0}, "not resolved", "sngm optimizer.norm=global at batch 1024"),
    ({0.1: 87.0}, {0.05: 84.0, 0.1: 85.0, 0.2: 80.0}, "not supported", None),
])
def test_block_wise_verdict_does_not_rest_on_an_lr_at_the_grid_edge(tmp_path, layer_grid, global_grid, verdict,
                                                                    edge):
    make_grid(tmp_path, "sngm", 1024, layer_grid, "layer")
    make_grid(tmp_path, "sngm", 1024, global_grid, "global")
    found, text = verdicts(tmp_path)
    assert found[2] == verdict, text
    assert re.findall(r"^   (.*): its selected LR", text, re.M) == ([edge] if edge else []), text


def test_larger_batch_verdict_does_not_rest_on_an_lr_at_the_grid_edge(tmp_path):
    # SNGM keeps its accuracy to 1024, MSGD's drops after 128, but MSGD's best LR at 1024 is the largest tried.
    for batch_size, sngm, msgd_grid in [(128, 92.0, {0.05: 91.0, 0.1: 92.2, 0.2: 91.5}),
                                        (1024, 91.5, {0.05: 85.0, 0.1: 89.0})]:
        make_grid(tmp_path, "sngm", batch_size, {0.05: sngm - 5, 0.1: sngm, 0.2: sngm - 5}, "global")
        make_grid(tmp_path, "msgd", batch_size, msgd_grid)
    found, text = verdicts(tmp_path)
    assert found[1] == "not resolved", text
    assert "msgd at batch 1024: its selected LR (optimizer.lr x lr_factor) 0.1 is the largest tried" in text
    make_run(tmp_path, "msgd", 1024, seeds(88.0), lr=0.2)
    assert verdicts(tmp_path)[0][1] == "supported"


def test_optimizers_compared_at_one_lr_each_are_not_resolved(tmp_path):
    # A clear lead, but each optimizer ran at one LR per batch size: neither was compared at its best.
    for batch_size, sngm, msgd in [(128, 92.0, 92.2), (1024, 91.5, 85.0)]:
        make_run(tmp_path, "sngm", batch_size, seeds(sngm), "global")
        make_run(tmp_path, "msgd", batch_size, seeds(msgd))
    found, text = verdicts(tmp_path)
    assert found[:2] == ["not resolved", "not resolved"], text
    assert ("msgd at batch 1024: only one LR (optimizer.lr x lr_factor), 0.1, was tried, so its best LR may be "
            "another: sweep lr_factor there.") in text
    assert "| 1024 | sngm 91.50 (n=3, one LR) | msgd 85.00 (n=3, one LR) |" in text


def test_a_tie_in_the_largest_batch_kept_is_not_resolved(tmp_path):
    # Both keep their accuracy to 1024 and lose it at 4096: this grid of batch sizes cannot tell them apart.
    for batch_size, sngm, msgd in [(128, 92.0, 92.2), (1024, 91.5, 91.8), (4096, 85.0, 80.0)]:
        make_run(tmp_path, "sngm", batch_size, seeds(sngm), "global")
        make_run(tmp_path, "msgd", batch_size, seeds(msgd))
    found, text = verdicts(tmp_path)
    assert found[1] == "not resolved", text
    assert "Both keep their accuracy up to batch 1024: these batch sizes do not tell them apart" in text
    assert "The claim fails" not in text
    # One LR each: a better one anywhere could break the tie.
    larger_batch = text.split("2. **")[1].split("3. **")[0]
    assert larger_batch.count("only one LR (optimizer.lr x lr_factor), 0.1, was tried") == 6, larger_batch


@pytest.mark.parametrize("sngm_accs, msgd_accs", [
    # One seed a cell: MSGD's mean drops 1.1 points from batch 128 to 1024, SNGM's 0.5; the seed noise is unknown.
    (([92.0], [91.5]), ([92.0], [90.9])),
    # Three seeds: MSGD's mean drops 1.2 points, but its seeds at 1024 spread over 3.6.
    ((seeds(92.0), seeds(91.5)), (seeds(92.0), [89.0, 90.8, 92.6])),
    # MSGD's drop of 1.1 points is certain to exceed 0, but not 1 (its interval is about [-1.33, -0.87]).
    ((seeds(92.0), seeds(91.5)), (seeds(92.0), seeds(90.9))),
    # SNGM's mean drops 0.5 points, but its seeds at 1024 spread over 5: they do not show it within 1 point.
    ((seeds(92.0), [89.0, 91.5, 94.0]), (seeds(92.0), seeds(89.0))),
])
def test_a_drop_within_seed_noise_does_not_decide_the_larger_batch_claim(tmp_path, sngm_accs, msgd_accs):
    # On means alone SNGM keeps its best accuracy (within 1 point) at 1024 and MSGD does not, but the seeds do
    # not show that SNGM's accuracy at 1024 lies within 1 point of its best, or that MSGD's lies more than 1
    # point below its own.
    for batch_size, sngm, msgd in zip((128, 1024), sngm_accs, msgd_accs):
        for lr, worse in ((0.05, 5.0), (0.1, 0.0), (0.2, 5.0)):
            make_run(tmp_path, "sngm", batch_size, [acc - worse for acc in sngm], "global", lr)
            make_run(tmp_path, "msgd", batch_size, [acc - worse for acc in msgd], lr=lr)
    found, text = verdicts(tmp_path)
    assert found[1] == "not resolved", text
    assert "(on means alone, noise aside: SNGM 1024, MSGD 128)" in text
    assert "more seeds are needed" in text.split("2. **")[1].split("3. **")[0]


def test_differences_within_seed_noise_decide_neither_the_large_batch_nor_the_block_wise_claim(tmp_path):
    # At batch 4096 MSGD's mean is 0.3 points above SNGM's, and layer's 0.3 above global's, but the seeds spread
    # over a point: each interval includes 0, and the block-wise one reaches past +1, a gain that would matter.
    for lr, worse in ((0.05, 5.0), (0.1, 0.0), (0.2, 5.0)):
        for mean, optimizer, norm in ((85.0, "sngm", "global"), (85.3, "sngm", "layer"), (85.3, "msgd", None)):
            make_run(tmp_path, optimizer, 4096, [mean - worse + d for d in (-0.5, 0.0, 0.5)], norm, lr)
    found, text = verdicts(tmp_path)
    assert (found[0], found[2]) == ("not resolved", "not resolved"), text
    assert "- SNGM − msgd (85.30, n=3): -0.30 [-1.43, +0.83]" in text
    assert "- batch 4096: layer − global +0.30 [-0.83, +1.43]" in text


def test_both_keeping_their_accuracy_to_the_largest_batch_is_not_resolved(tmp_path):
    for batch_size, sngm, msgd in [(128, 92.0, 92.2), (1024, 91.8, 91.9)]:
        make_grid(tmp_path, "sngm", batch_size, {0.05: sngm - 5, 0.1: sngm, 0.2: sngm - 5}, "global")
        make_grid(tmp_path, "msgd", batch_size, {0.05: msgd - 5, 0.1: msgd, 0.2: msgd - 5})
    found, text = verdicts(tmp_path)
    assert found[1] == "not resolved", text
    assert "Both keep it up to the largest batch run (1024); larger batches are needed to tell them apart." in text


def test_a_batch_size_where_no_lr_completed_does_not_decide_the_larger_batch_claim(tmp_path):
    # MSGD diverged at both LRs tried at 512, where SNGM keeps its accuracy: a smaller LR may train MSGD there.
    for batch_size, mean in [(128, 90.0), (256, 89.8), (512, 89.5)]:
        make_grid(tmp_path, "sngm", batch_size, {0.05: mean - 3, 0.1: mean, 0.2: mean - 3}, "global")
    for batch_size, mean in [(128, 90.0), (256, 89.6)]:
        make_grid(tmp_path, "msgd", batch_size, {0.05: mean - 3, 0.1: mean, 0.2: mean - 3})
    for lr in (0.4, 0.8):
        make_run(tmp_path, "msgd", 512, seeds(0.0), lr=lr, status="diverged")
    found, text = verdicts(tmp_path)
    assert found[1] == "not resolved", text
    assert "MSGD at batch 512: no LR tried completed, so one outside the grid may: extend the grid there." in text
    make_grid(tmp_path, "msgd", 512, {0.05: 75.0, 0.1: 80.0})  # smaller LRs train, far below its best
    assert verdicts(tmp_path)[0][1] == "supported"


def test_global_sngm_at_the_grid_edge_does_not_hold_back_a_supported_block_wise_claim(tmp_path):
    # Layer − global is +0.2 with an interval below +1: a better LR for global could only lower it.
    make_grid(tmp_path, "sngm", 4096, {0.05: 80.0, 0.1: 90.0}, "global")
    make_grid(tmp_path, "sngm", 4096, {0.05: 80.0, 0.2: 80.0}, "layer")
    make_run(tmp_path, "sngm", 4096, [89.9, 90.2, 90.5], "layer", lr=0.1)
    found, text = verdicts(tmp_path)
    assert found[2] == "supported", text
    assert "layer − global +0.20 [" in text


@pytest.mark.parametrize("select_by, optimistic", [("final_test_acc", True), ("best_test_acc", True),
                                                   ("final_train_loss", False)])
def test_an_lr_chosen_on_the_judged_test_accuracy_is_said_to_lean_optimistic(tmp_path, select_by, optimistic):
    make_three_arms(tmp_path, [(128, 92.0, 92.2, 90.0), (1024, 91.5, 89.0, 89.5)])
    runs = report.collect_runs([tmp_path])
    text = claims.verdict(runs, report.aggregate(runs, select_by), select_by)
    assert ("The LR is chosen on the test accuracy that is judged: a selected mean is the highest of the LRs' "
            "means, so it leans optimistic" in text) == optimistic, text


def test_an_lr_chosen_on_held_out_images_is_said_so_and_the_table_keeps_the_test_accuracy(tmp_path):
    # SNGM's test accuracy favours lr 0.2, its held-out training images lr 0.1: the rule decides the LR.
    for lr, test, holdout in ((0.05, 80.0, 80.0), (0.1, 85.0, 88.0), (0.2, 86.0, 84.0), (0.4, 70.0, 70.0)):
        make_run(tmp_path, "sngm", 4096, seeds(test), "global", lr, holdout_accs=seeds(holdout))
        make_run(tmp_path, "msgd", 4096, seeds(test - 2), lr=lr, holdout_accs=seeds(holdout - 2))
    runs = report.collect_runs([tmp_path])
    for select_by, lr in (("final_test_acc", 0.2), ("final_holdout_acc", 0.1)):
        cells = report.aggregate(runs, select_by)
        assert cells.loc[cells["selected"] & (cells["series"] == "sngm"), "lr"].tolist() == [lr]
    assert report.accuracy_table(cells).loc["sngm", "batch 4096"] == "85.00 ± 0.10 (3); lr 0.1"
    text = claims.verdict(runs, cells, "final_holdout_acc")
    assert ("the LR with the best mean final_holdout_acc over seeds (two LRs compared on the seeds both ran), "
            "chosen on training images held out of training (dataset.holdout_images), without the test set;") in text
    assert "leans optimistic" not in text and "SNGM − msgd (83.00, n=3): +2.00 [" in text
    assert "(5000 training images held out)" in report.provenance(runs)


def test_selection_by_held_out_images_is_refused_in_one_line_for_runs_without_them(tmp_path):
    make_run(tmp_path, "sngm", 4096, seeds(85.0), "global", holdout_accs=seeds(88.0))
    make_run(tmp_path, "msgd", 4096, seeds(84.0))
    runs = report.collect_runs([tmp_path])
    message = ("--select-by final_holdout_acc: 3 of the 6 completed runs have no final_holdout_acc (trained without "
               "dataset.holdout_images); choose another --select-by, or report on runs that all have it")
    with pytest.raises(UserError, match=re.escape(message)):
        report.aggregate(runs, "final_holdout_acc")
    result = subprocess.run([REPORT_CLI, str(tmp_path), "--out", str(tmp_path / "report"), "--select-by",
                             "final_holdout_acc"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.splitlines() == [f"sngm-bench-report: error: {message}"]


def test_runs_from_before_held_out_images_count_as_holding_none(tmp_path):
    # make_run's configs without held-out images lack the key, as those of runs from before it existed: the
    # report must not caption them as holding out the others' 5000, nor leave their column empty in runs.csv.
    make_run(tmp_path, "sngm", 4096, seeds(85.0), "global", holdout_accs=seeds(88.0))
    make_run(tmp_path, "msgd", 4096, seeds(84.0))
    runs = report.collect_runs([tmp_path])
    assert runs.groupby("optimizer")["holdout_images"].unique().to_dict() == {"msgd": [0], "sngm": [5000]}
    assert "(0, 5000 training images held out)" in report.provenance(runs)


def test_a_caption_of_runs_with_and_without_a_subset_names_both(tmp_path):
    make_run(tmp_path, "sngm", 4096, seeds(85.0), "global")
    make_run(tmp_path, "msgd", 4096, seeds(84.0))
    assert "cifar10, resnet20" in report.provenance(report.collect_runs([tmp_path]))  # no subset: none said
    for config_file in tmp_path.glob("msgd-*/.hydra/config.yaml"):
        config = yaml.safe_load(config_file.read_text())
        config["dataset"]["subset"] = 7680
        config_file.write_text(yaml.safe_dump(config))
    assert "cifar10 (the full training set and 7680-image training subsets), resnet20" in report.provenance(
        report.collect_runs([tmp_path]))
    for run_dir in tmp_path.glob("sngm-*"):
        shutil.rmtree(run_dir)
    assert "cifar10 (7680-image training subset), resnet20" in report.provenance(report.collect_runs([tmp_path]))


def test_a_caption_says_when_runs_trained_on_files_that_are_not_the_official_release(tmp_path):
    make_run(tmp_path, "sngm", 4096, seeds(85.0), "global")
    make_run(tmp_path, "msgd", 4096, seeds(84.0))
    assert "official" not in report.provenance(report.collect_runs([tmp_path]))  # not recorded: nothing said
    for number, summary_file in enumerate(sorted(tmp_path.glob("*/summary.json"))):
        summary = json.loads(summary_file.read_text())
        summary_file.write_text(json.dumps({**summary, "data_official": number >= 2}))
    note = "(not the official release's files for 2 of the 6 runs: data_official in summary.json)"
    assert f"cifar10 {note}, resnet20" in report.provenance(report.collect_runs([tmp_path]))


def test_runs_that_differ_in_any_trained_setting_are_not_pooled_as_seeds(tmp_path):
    # The same grid at two warmups: two protocols, each judged alone, and four table rows, not two with 6 seeds.
    for warmup, (sngm_means, msgd_mean) in {0: ({0.1: 80.0, 0.2: 70.0}, 85.0), 5: ({0.1: 80.0, 0.2: 88.0}, 85.0)}.items():
        for lr, mean in {0.05: 60.0, **sngm_means}.items():
            make_run(tmp_path, "sngm", 4096, seeds(mean), "global", lr=lr, warmup_epochs=warmup)
        for lr, mean in {0.05: 60.0, 0.1: msgd_mean, 0.2: 60.0}.items():
            make_run(tmp_path, "msgd", 4096, seeds(mean), lr=lr, warmup_epochs=warmup)
    runs = report.collect_runs([tmp_path])
    assert sorted(runs["series"].unique()) == ["msgd schedule.warmup_epochs=0", "msgd schedule.warmup_epochs=5",
                                               "sngm schedule.warmup_epochs=0", "sngm schedule.warmup_epochs=5"]
    assert (report.aggregate(runs)["n"] == 3).all()
    found, text = verdicts(tmp_path)
    titles = re.findall(r"^## Protocol: .*$", text, re.M)
    assert [title.endswith(f"schedule.warmup_epochs={w}") for title, w in zip(titles, (0, 5))] == [True, True], text
    assert found[0] == "not supported" and found[3] == "supported", text


def test_optimizers_trained_under_different_protocols_never_share_a_bare_row_name(tmp_path):
    # Each optimizer alone has one setting, but the two differ in warmup: their rows say so, in the
    # table as in claims.md's two protocol sections, rather than reading as a like-for-like pair.
    for lr in (0.05, 0.1):
        make_run(tmp_path, "sngm", 4096, seeds(80.0), "global", lr=lr, warmup_epochs=5)
        make_run(tmp_path, "msgd", 4096, seeds(75.0), lr=lr, warmup_epochs=0)
    runs = report.collect_runs([tmp_path])
    assert sorted(runs["series"].unique()) == ["msgd schedule.warmup_epochs=0", "sngm schedule.warmup_epochs=5"]
    assert sorted(runs["protocol"].unique()) == ["schedule.warmup_epochs=0", "schedule.warmup_epochs=5"]


def test_tiny_sweep_report_holds_claims_and_steps_to_target(tmp_path, cifar_root, caplog):
    result = run_cli(["-m", "experiment=smoke", "model.width=4", "dataset.subset=400", "epochs=1",
                      "batch_size=100,200", "optimizer=sngm,msgd", "noise_scale_every=1",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "report"
    # A target of 5 %, half of chance, which every run reaches in its one epoch.
    result = subprocess.run([REPORT_CLI, str(tmp_path / "sweep"), "--out", str(out), "--target-acc", "0.05"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = (out / "claims.md").read_text()
    assert "## Protocol: dataset=cifar10, subset=400, model=resnet8, width=4, epochs_planned=1" in text
    assert "| 100 |" in text and "| 200 |" in text and text.count("**") == 6
    for run_dir in (tmp_path / "sweep").glob("batch_size=*"):
        assert f"`{run_dir.name}`" in text
    assert (out / "steps_to_target.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "steps_to_target.pdf").read_bytes().startswith(b"%PDF")
    # Nothing reaches 100 %: no figure, and a warning says why.
    report.write_report([tmp_path / "sweep"], tmp_path / "none", target_acc=1.0)
    assert "no run reached 100 % test accuracy: steps_to_target not drawn" in caplog.text
    assert not (tmp_path / "none" / "steps_to_target.png").exists()


def test_the_large_batch_claim_is_judged_against_the_papers_baselines_only(tmp_path):
    # The paper claims SNGM beats MSGD, LARS and LAMB; Nesterov beating SNGM is shown, not a failure of the claim.
    make_three_arms(tmp_path, [(128, 92.0, 92.2, 90.0), (4096, 85.0, 80.0, 83.0)])
    make_grid(tmp_path, "nesterov", 4096, {0.05: 83.0, 0.1: 88.0, 0.2: 83.0})
    found, text = verdicts(tmp_path)
    assert found[0] == "supported", text
    assert "- SNGM − nesterov (88.00, n=3): -3.00 [" in text and "not one of the paper's baselines" in text
