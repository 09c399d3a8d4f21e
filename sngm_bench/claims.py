"""The written verdict of a report, `claims.md`: per batch size the best optimizer and its margins,
and whether the SNGM paper's claims hold on this run set (Zhao et al., arXiv 2007.13985).

Every comparison uses, per optimizer and batch size, the completed seeds of the LR the report
selected (by its `--select-by` rule, which claims.md names), and their final test accuracy. A
margin is a difference of means over seeds with a two-sided 95 % Welch t interval; it is "not
resolved" with fewer than two seeds on either side, or when the seeds of each side agree exactly
(their spread, hence the interval, is unknown): one seed, or identical ones, show an observed
difference, never a significant one.
Runs that differ in a trained setting outside `optimizer.*` (dataset, model, epochs, schedule,
precision, ...: the report's `protocol`) are judged separately, one section per protocol. The claims:

1. At the same large batch (the largest batch size at which SNGM and one of the paper's baselines,
   MSGD, LARS, LAMB, both completed), SNGM reaches a better test accuracy than each of them: supported
   when every interval of SNGM − baseline lies wholly above 0, not supported when one lies wholly at
   or below 0. Other optimizers are listed, not judged: the paper claims nothing about them.
2. At the same number of gradient computations (equal epochs), SNGM can use a larger batch than
   MSGD (a theorem of the paper, on convergence to an ε-stationary point; here its test-accuracy
   counterpart): per optimizer, a batch size (of those both ran) keeps its best accuracy (the best
   mean over them) when the interval of its accuracy minus the best lies wholly above −`within`
   points, and loses it when the interval lies wholly below; supported when SNGM keeps its best
   accuracy at a larger batch than MSGD does and MSGD is shown to lose its own there, not supported
   the other way round, else not resolved (the same largest batch kept, or one that these seeds show
   neither to keep nor to lose it). The means alone, noise aside, are shown beside as observed.
3. Block-wise normalization (`optimizer.norm=layer`) does not help SNGM: not supported when some
   interval of layer − global lies wholly above 0, supported when every one lies wholly below
   +`within` points.

A verdict never rests on a cell whose selected LR is at the grid's edge (the smallest or largest
of several tried, `report.grid_edge_sides`, or the only one tried: an optimizer run at one LR is
not compared at its best) where a better LR outside the grid could overturn it: such a verdict is
"not resolved", and the evidence says which grid to extend. Claim 1: a rival SNGM beats at such
an LR, or SNGM at one when a rival beats it. Claim 2: any cell of the optimizer the verdict
favours (a better mean raises the bar its batch sizes are held to), or one of the other's beyond
its largest batch kept, and a batch size of either where no LR tried completed (when both keep
their accuracy up to the same batch, every such cell of either is listed: any may break the tie).
Claim 3: the layer series for "supported", global SNGM for "not supported" (a gain of layer over it).
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass

import pandas as pd

from sngm_bench.report import COMPLETED, grid_edge_sides, status_counts

CONFIDENCE = 0.95
# The report columns that describe a protocol in its section's title, followed by the report's
# `protocol` label: the keys in which it differs from the other protocols of the run set.
PROTOCOL_COLUMNS = ["dataset", "subset", "model", "width", "epochs_planned", "schedule", "warmup_epochs",
                    "precision"]
SUPPORTED, NOT_SUPPORTED, NOT_RESOLVED = "supported", "not supported", "not resolved"
# The paper's baselines that this benchmark implements (MSGD and the large-batch methods LARS and LAMB);
# others run beside them (Nesterov, AdamW, `_target_` ones) are shown under claim 1 but not judged.
PAPER_BASELINES = frozenset({"msgd", "lars", "lamb"})
# The report's --select-by rules that choose an LR on the test accuracy the claims then judge.
SELECTED_ON_TEST = frozenset({"final_test_acc", "best_test_acc"})
# What each --select-by rule chooses the LR on, as claims.md says it.
SELECTION_BASIS = {
    "final_test_acc": "the test accuracy that is judged here",
    "best_test_acc": "the test accuracy that is judged here (at its best epoch)",
    "final_train_loss": "the training loss, without the test set",
    "final_holdout_acc": "training images held out of training (dataset.holdout_images), without the test set",
}


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's continued fraction of the regularized incomplete beta function (Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_quantile(p: float, df: float) -> float:
    """The p-quantile (p > 0.5) of Student's t with `df` (real) degrees of freedom, by bisection on
    the two-sided tail P(|T| > t) = I_{df/(df+t²)}(df/2, 1/2) (no SciPy needed)."""
    low, high = 0.0, 1e7
    for _ in range(200):
        mid = (low + high) / 2
        if incomplete_beta(df / 2, 0.5, df / (df + mid * mid)) > 2 * (1 - p):
            low = mid
        else:
            high = mid
    return (low + high) / 2


@dataclass
class Margin:
    """Mean of `a` − mean of `b` (points) with its Welch interval; low/high None when not resolved."""

    diff: float
    n_a: int
    n_b: int
    low: float | None = None
    high: float | None = None

    @property
    def resolved(self) -> bool:
        return self.low is not None

    def __str__(self) -> str:
        if self.resolved:
            return f"{self.diff:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"
        if min(self.n_a, self.n_b) >= 2:
            return f"{self.diff:+.2f}, not resolved: the seeds agree exactly on both sides, so their spread is unknown"
        seeds = f"{self.n_a} seed" if self.n_a == self.n_b == 1 else f"{self.n_a} and {self.n_b} seeds"
        return f"{self.diff:+.2f}, not resolved with {seeds}"


def welch(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> Margin:
    """mean(a) − mean(b) with its two-sided Welch t interval; none with fewer than 2 values a side, or when
    each side's values all agree: a spread of 0 measured on a few seeds (accuracies are rounded to the test
    set's size) is no evidence that seeds do not matter, and Welch's degrees of freedom are then 0/0."""
    margin = Margin(statistics.mean(a) - statistics.mean(b), len(a), len(b))
    if len(a) < 2 or len(b) < 2:
        return margin
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return margin
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(0.5 + confidence / 2, df) * math.sqrt(va + vb)
    margin.low, margin.high = margin.diff - half, margin.diff + half
    return margin


@dataclass
class Cell:
    """One series at one batch size: the selected LR's completed seeds."""

    series: str
    optimizer: str
    norm: str | None
    batch_size: int
    lr: float
    accs: list[float]  # final test accuracy of each seed, points
    mean: float  # theirs, points: the accuracy table's number (report.aggregate), so both round it alike
    run_dirs: list[str]
    grid_edge: str = ""  # "smallest" or "largest" when the LR is that end of several tried, "only", else ""
    not_completed: str = ""  # the seeds at this LR that did not complete, by status ("diverged 1")

    def __str__(self) -> str:
        edge = {"": "", "only": ", one LR"}.get(self.grid_edge, ", grid edge")
        lost = f", {self.not_completed}" if self.not_completed else ""
        return f"{self.series} {self.mean:.2f} (n={len(self.accs)}{lost}{edge})"


# Which optimizer a Cell (or a run row, which has the same attributes) is.
def is_sngm(cell) -> bool:
    return cell.optimizer == "sngm" and cell.norm != "layer"


def is_sngm_layer(cell) -> bool:
    return cell.optimizer == "sngm" and cell.norm == "layer"


def is_msgd(cell) -> bool:
    return cell.optimizer == "msgd"


def selected_cells(runs: pd.DataFrame, cells: pd.DataFrame) -> list[Cell]:
    """A Cell per (series, batch size) with completed runs at its selected LR; the seeds there that
    did not complete (diverged, failed) are counted with it, since its mean leaves them out."""
    keys = ["series", "batch_size", "lr", "lr_factor"]  # the selected LR is optimizer.lr x lr_factor
    tried = (cells["lr"] * cells["lr_factor"]).groupby([cells["series"], cells["batch_size"]]).transform("nunique")
    edges = grid_edge_sides(cells).where(tried > 1, "only")
    chosen = cells.assign(edge=edges).loc[cells["selected"], [*keys, "edge", "mean_final_test_acc"]]
    at_lr = runs.merge(chosen, on=keys)
    lost = at_lr.groupby(["series", "batch_size"])["status"].agg(status_counts)
    done = at_lr[at_lr["status"] == COMPLETED]
    return [Cell(series, first["optimizer"], first["norm"], int(batch_size), float(first["lr"] * first["lr_factor"]),
                 [100 * acc for acc in group["final_test_acc"]], 100 * first["mean_final_test_acc"],
                 list(group["run_dir"]), first["edge"], lost[series, batch_size])
            for (series, batch_size), group in done.groupby(["series", "batch_size"])
            for first in [group.iloc[0]]]


def grid_edge_caution(cell: Cell) -> str:
    """Why a verdict that rests on `cell`, whose LR is at the grid's edge, is not resolved."""
    if cell.grid_edge == "only":
        return (f"{cell.series} at batch {cell.batch_size}: only one LR (optimizer.lr x lr_factor), {cell.lr:g}, was "
                "tried, so its best LR may be another: sweep lr_factor there.")
    direction = "smaller" if cell.grid_edge == "smallest" else "larger"
    return (f"{cell.series} at batch {cell.batch_size}: its selected LR (optimizer.lr x lr_factor) {cell.lr:g} is "
            f"the {cell.grid_edge} tried, so its best LR may lie outside the grid: extend the grid to {direction} LRs.")


def best(cells: list[Cell], batch_size: int, which) -> Cell | None:
    """The cell with the best mean accuracy at `batch_size` among those `which` accepts (several series of one
    optimizer, e.g. two weight decays, count as one optimizer tuned over them)."""
    found = [c for c in cells if c.batch_size == batch_size and which(c)]
    return max(found, key=lambda c: c.mean, default=None)


def per_batch(cells: list[Cell]) -> list[str]:
    lines = ["| batch | best | runner-up | best − runner-up | best − MSGD |", "|---|---|---|---|---|"]
    for batch_size in sorted({c.batch_size for c in cells}):
        ranked = sorted((c for c in cells if c.batch_size == batch_size), key=lambda c: c.mean, reverse=True)
        top = ranked[0]
        second = ranked[1] if len(ranked) > 1 else None
        msgd = best(ranked, batch_size, is_msgd)
        over_second = str(welch(top.accs, second.accs)) if second else "–"
        over_msgd = "–" if msgd is None else "(best)" if msgd is top else str(welch(top.accs, msgd.accs))
        lines.append(f"| {batch_size} | {top} | {second or '–'} | {over_second} | {over_msgd} |")
    return lines


def claim_large_batch(cells: list[Cell]) -> tuple[str, list[str]]:
    """Claim 1: at the same large batch, SNGM beats MSGD and the large-batch methods LARS and LAMB."""
    others = [c for c in cells if c.optimizer in PAPER_BASELINES]
    common = {c.batch_size for c in cells if is_sngm(c)} & {c.batch_size for c in others}
    if not common:
        return NOT_RESOLVED, ["No batch size has completed runs of both SNGM and MSGD, LARS or LAMB."]
    batch_size = max(common)
    sngm = best(cells, batch_size, is_sngm)

    def bests(names):
        return [best(cells, batch_size, lambda c, name=name: c.optimizer == name) for name in sorted(names)]

    at_batch = {c.optimizer for c in cells if c.batch_size == batch_size and c.optimizer != "sngm"}
    margins = [(rival, welch(sngm.accs, rival.accs)) for rival in bests(at_batch & PAPER_BASELINES)]
    lines = [f"At batch {batch_size}, the largest run by SNGM and one of MSGD, LARS, LAMB: {sngm}."]
    lines += [f"- SNGM − {rival.series} ({rival.mean:.2f}, n={len(rival.accs)}): {m}" for rival, m in margins]
    lines += [f"- SNGM − {other.series} ({other.mean:.2f}, n={len(other.accs)}): {welch(sngm.accs, other.accs)} "
              "(not one of the paper's baselines: not judged)" for other in bests(at_batch - PAPER_BASELINES)]
    beaten = [rival.series for rival, m in margins if m.resolved and m.high <= 0]
    if beaten and not sngm.grid_edge:
        lines.append(f"The claim fails: at batch {batch_size}, SNGM is not better than {', '.join(beaten)}.")
        return NOT_SUPPORTED, lines
    # A lead over a cell at the grid's edge may be the lack of a better LR, not the optimizer.
    under_tuned = [sngm] if sngm.grid_edge and any(m.diff <= 0 for _, m in margins) else []
    under_tuned += [rival for rival, m in margins if rival.grid_edge and m.diff > 0]
    if not under_tuned and all(m.resolved and m.low > 0 for _, m in margins):
        return SUPPORTED, lines
    lines += map(grid_edge_caution, under_tuned)
    if not all(m.resolved and (m.low > 0 or m.high <= 0) for _, m in margins):
        lines.append("Some intervals include 0, or could not be computed (too few seeds, or seeds that agree "
                     "exactly): more seeds are needed.")
    return NOT_RESOLVED, lines


@dataclass
class Reach:
    """How far up the batch sizes one optimizer keeps its own best accuracy: its best cell (the best mean
    over the batch sizes compared) and, per other batch size it completed, the margin of that cell over it.
    A batch size keeps the best accuracy when the margin's interval lies wholly above −`within` points,
    and loses it when the interval lies wholly below; else these seeds do not tell."""

    name: str
    cells: dict[int, Cell]
    top: Cell
    margins: dict[int, Margin]
    within: float

    def keeps(self, batch_size: int) -> bool:
        margin = self.margins.get(batch_size)
        return batch_size == self.top.batch_size or (margin is not None and margin.resolved
                                                     and margin.low > -self.within)

    def loses(self, batch_size: int) -> bool:
        margin = self.margins.get(batch_size)
        return margin is not None and margin.resolved and margin.high < -self.within

    def largest_kept(self) -> int:
        return max(b for b in self.cells if self.keeps(b))

    def largest_on_means(self) -> int:
        """The largest batch size whose mean is within `within` points of the best: observed, noise aside."""
        return max(b for b, c in self.cells.items() if c.mean >= self.top.mean - self.within)

    def undecided(self, beyond: int) -> list[int]:
        """The batch sizes above `beyond` that these seeds show neither to keep nor to lose the best accuracy."""
        return [b for b in self.margins if b > beyond and not self.keeps(b) and not self.loses(b)]

    def __str__(self) -> str:
        top = self.top
        margins = "; ".join(f"batch {b} {m}" for b, m in self.margins.items()) or "no other batch size completed"
        return f"{self.name}: best {top.mean:.2f} at batch {top.batch_size} (n={len(top.accs)}); minus it: {margins}"


def reach(cells: list[Cell], which, name: str, batch_sizes: list[int], within: float) -> Reach | None:
    """The Reach of the optimizer `which` accepts over `batch_sizes`; None when it completed none of them."""
    found = {b: cell for b in batch_sizes if (cell := best(cells, b, which)) is not None}
    if not found:
        return None
    top = max(found.values(), key=lambda c: c.mean)
    return Reach(name, found, top, {b: welch(c.accs, top.accs) for b, c in found.items() if c is not top}, within)


def lr_cautions(under_tuned: list[Cell], never_completed: list[tuple[str, int]]) -> list[str]:
    """Why a verdict is not resolved: cells whose LR is at the grid's edge, and (optimizer name, batch size)
    pairs where no LR tried completed; either may hold a better LR outside the grid."""
    return [grid_edge_caution(c) for c in under_tuned] + [
        f"{name} at batch {b}: no LR tried completed, so one outside the grid may: extend the grid there."
        for name, b in never_completed]


def claim_larger_batch(cells: list[Cell], runs: pd.DataFrame, within: float) -> tuple[str, list[str]]:
    """Claim 2: at equal gradient computations (equal epochs), SNGM keeps its accuracy to a larger batch than
    MSGD. The batch sizes compared are those both ran, whatever became of the runs."""
    tried = [{run.batch_size for run in runs.itertuples() if which(run)} for which in (is_sngm, is_msgd)]
    batch_sizes = sorted(tried[0] & tried[1])
    if len(batch_sizes) < 2:
        return NOT_RESOLVED, ["SNGM and MSGD need at least two batch sizes in common (they have "
                              f"{', '.join(map(str, batch_sizes)) or 'none'})."]
    sngm, msgd = (reach(cells, which, name, batch_sizes, within)
                  for which, name in ((is_sngm, "SNGM"), (is_msgd, "MSGD")))
    lines = [f"Batch sizes run by both, at equal epochs: {', '.join(map(str, batch_sizes))}. A batch size keeps an "
             "optimizer's best accuracy (its best mean over these batch sizes) when the interval of its accuracy "
             f"minus the best lies wholly above −{within:g} point(s), and loses it when the interval lies wholly "
             "below."]
    if sngm is None or msgd is None:
        return NOT_RESOLVED, lines + ["One of them has no completed run at these batch sizes."]
    lines += [f"- {sngm}", f"- {msgd}",
              f"Largest batch that keeps it: SNGM {sngm.largest_kept()}, MSGD {msgd.largest_kept()} (on means alone, "
              f"noise aside: SNGM {sngm.largest_on_means()}, MSGD {msgd.largest_on_means()})."]
    if sngm.largest_kept() == msgd.largest_kept():
        kept = sngm.largest_kept()
        undecided = [f"{r.name} at batch {b}" for r in (sngm, msgd) for b in r.undecided(kept)]
        if undecided:
            reason = (f"Both are shown to keep it up to batch {kept}; these seeds do not show whether it is kept by "
                      f"{', '.join(undecided)}: more seeds are needed.")
        elif kept == batch_sizes[-1]:
            reason = f"Both keep it up to the largest batch run ({kept}); larger batches are needed to tell them apart."
        else:
            reason = (f"Both keep their accuracy up to batch {kept}: these batch sizes do not tell them apart; batch "
                      "sizes between it and the next may.")
        # A better LR in any cell of either could break the tie (or the best it is measured from).
        return NOT_RESOLVED, lines + [reason] + lr_cautions(
            [c for r in (sngm, msgd) for c in r.cells.values() if c.grid_edge],
            [(r.name, b) for r in (sngm, msgd) for b in batch_sizes if b not in r.cells])
    favoured, other = (sngm, msgd) if sngm.largest_kept() > msgd.largest_kept() else (msgd, sngm)
    at, other_largest = favoured.largest_kept(), other.largest_kept()
    # A better LR could turn the verdict for any cell of the optimizer it favours (a higher best raises the
    # bar) or for one of the other's beyond that one's largest batch kept (it could come within); so
    # could any LR at all at a batch size where none of those tried completed.
    cautions = lr_cautions(
        [c for c in favoured.cells.values() if c.grid_edge]
        + [c for b, c in other.cells.items() if b > other_largest and c.grid_edge],
        [(favoured.name, b) for b in batch_sizes if b not in favoured.cells]
        + [(other.name, b) for b in batch_sizes if b > other_largest and b not in other.cells])
    if at in other.margins and not other.loses(at):
        cautions.append(f"{other.name} at batch {at}: {other.margins[at]}, shown neither to keep nor to lose its "
                        "best accuracy: more seeds are needed.")
    if cautions:
        return NOT_RESOLVED, lines + cautions
    if favoured is sngm:
        return SUPPORTED, lines + [f"SNGM keeps its best accuracy at batch {at}, where MSGD is shown to lose its own."]
    return NOT_SUPPORTED, lines + [f"The claim fails: MSGD keeps its best accuracy at batch {at}, where SNGM is "
                                   "shown to lose its own."]


def claim_block_wise(cells: list[Cell], within: float) -> tuple[str, list[str]]:
    """Claim 3: block-wise (per-tensor) normalization does not help SNGM."""
    batch_sizes = sorted({c.batch_size for c in cells if is_sngm_layer(c)}
                         & {c.batch_size for c in cells if is_sngm(c)})
    if not batch_sizes:
        return NOT_RESOLVED, ["No batch size has completed runs of SNGM with both optimizer.norm=layer and global."]
    pairs = {b: (best(cells, b, is_sngm_layer), best(cells, b, is_sngm)) for b in batch_sizes}
    margins = {b: welch(layer.accs, glob.accs) for b, (layer, glob) in pairs.items()}
    lines = [f"- batch {b}: layer − global {m}" for b, m in margins.items()]
    helps = [b for b, m in margins.items() if m.resolved and m.low > 0 and not pairs[b][1].grid_edge]
    if helps:
        return NOT_SUPPORTED, lines + [f"The claim fails: block-wise normalization helps at batch "
                                       f"{', '.join(map(str, helps))}."]
    # A gain of layer over global at the grid's edge may be the lack of a better LR for global, and a
    # layer series at the grid's edge may gain more with a better LR.
    under_tuned = [glob for b, (_, glob) in pairs.items() if glob.grid_edge and margins[b].resolved and margins[b].low > 0]
    under_tuned += [layer for layer, _ in pairs.values() if layer.grid_edge]
    if not under_tuned and all(m.resolved and m.high < within for m in margins.values()):
        return SUPPORTED, lines + [f"At every batch size the interval excludes a gain of {within:g} point(s) or more."]
    lines += map(grid_edge_caution, under_tuned)
    if not all(m.resolved and (m.low > 0 or m.high < within) for m in margins.values()):
        lines.append("Some intervals are too wide, or could not be computed (too few seeds, or seeds that agree "
                     "exactly): more seeds are needed.")
    return NOT_RESOLVED, lines


def protocol_line(runs: pd.DataFrame) -> str:
    first = runs.iloc[0]
    described = [f"{column}={first[column]}" for column in PROTOCOL_COLUMNS if column in runs]
    return ", ".join(described + ([first["protocol"]] if first["protocol"] else []))


def run_list(cells: list[Cell]) -> list[str]:
    dirs = [d for c in cells for d in c.run_dirs]
    root = os.path.commonpath(dirs) if len(dirs) > 1 else os.path.dirname(dirs[0])
    lines = [f"Run folders, under `{root}`:", "", "| series | batch | optimizer.lr x lr_factor | folders |",
             "|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c.series, c.batch_size)):
        folders = ", ".join(f"`{os.path.relpath(d, root)}`" for d in c.run_dirs)
        lines.append(f"| {c.series} | {c.batch_size} | {c.lr:g} | {folders} |")
    return lines


def protocol_section(runs: pd.DataFrame, cells: pd.DataFrame, select_by: str, within: float) -> list[str]:
    chosen = selected_cells(runs, cells)
    lines = [f"## Protocol: {protocol_line(runs)}", ""]
    if not chosen:
        return lines + ["No completed runs: nothing to judge.", ""]
    excluded = (runs["status"] != COMPLETED).sum()
    # Choosing the best of several LRs on the accuracy that is then judged keeps the luckiest seeds' LR.
    optimism = (" The LR is chosen on the test accuracy that is judged: a selected mean is the highest of the "
                "LRs' means, so it leans optimistic, the more so the more LRs come close, and the intervals do not "
                "allow for that choice (`--select-by final_holdout_acc` chooses on held-out training images, for runs "
                "trained with `dataset.holdout_images`; `--select-by final_train_loss` without held-out data)."
                if select_by in SELECTED_ON_TEST else "")
    lines += [f"{len(runs)} runs, {excluded} of them not completed (left out). Final test accuracy (%) at the last "
              f"epoch; per optimizer and batch size the LR with the best mean {select_by} over seeds (two LRs "
              f"compared on the seeds both ran), chosen on {SELECTION_BASIS[select_by]}; margins are differences "
              f"of means in points with a two-sided {100 * CONFIDENCE:g} % Welch t interval over seeds." + optimism,
              "", "### Best optimizer per batch size", "", *per_batch(chosen), ""]
    claims = [
        ("At the same large batch, SNGM reaches a better test accuracy than MSGD and the large-batch methods LARS "
         "and LAMB",
         claim_large_batch(chosen)),
        ("At the same number of gradient computations, SNGM can use a larger batch than MSGD (the paper proves it "
         "for convergence to an ε-stationary point; judged here by test accuracy)",
         claim_larger_batch(chosen, runs, within)),
        ("Block-wise normalization does not help (SNGM optimizer.norm=layer against global)",
         claim_block_wise(chosen, within)),
    ]
    lines += ["### The paper's claims", ""]
    for number, (claim, (verdict, evidence)) in enumerate(claims, 1):
        lines += [f"{number}. **{claim}: {verdict}.**", "", *(f"   {line}" for line in evidence), ""]
    return lines + ["### Runs", "", *run_list(chosen), ""]


def verdict(runs: pd.DataFrame, cells: pd.DataFrame, select_by: str, within: float = 1.0) -> str:
    """claims.md: one section per protocol among `runs` (the report's runs and aggregate cells)."""
    lines = ["# Claims of the SNGM paper on this run set", "",
             "Zhao, Shi, Xie, Li, \"Stochastic normalized gradient descent with momentum for large-batch training\" "
             "(arXiv 2007.13985). Verdicts: supported, not supported, or not resolved on these runs.", ""]
    for _, group in runs.groupby("protocol", sort=True):
        lines += protocol_section(group, cells[cells["series"].isin(group["series"])], select_by, within)
    return "\n".join(lines)
