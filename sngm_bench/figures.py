"""The figures of a report, as PNG and PDF: accuracy vs batch size, learning curves, time and
optimizer steps to a target accuracy, and the gradient-budget view (equal samples processed next to equal optimizer
steps).

Input is the per-epoch frame (`report.collect_epochs`) of the completed runs at the selected
LRs. A figure that leaves out a series or batch size, or has nothing to plot, says so on the
console (a warning), not only in the picture. Figures are `matplotlib.figure.Figure`s saved
directly (Agg for PNG, the PDF backend for PDF), so neither pyplot nor a GUI backend is involved.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

log = logging.getLogger(__name__)

ACCURACY_LABEL = "Test accuracy (%)"
BATCH_LABEL = "Batch size (images per step, log$_2$ scale)"
STEP_TOLERANCE = 0.05  # an evaluation counts as "at S steps" within 5 % of S


def new_figure(ncols: int, nrows: int = 1, **subplots) -> tuple[Figure, list[list[Axes]]]:
    figure = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    return figure, figure.subplots(nrows, ncols, squeeze=False, **subplots)


def save(figure: Figure, out: Path, name: str) -> None:
    """PNG and PDF; the PDF without a creation date, so regenerating unchanged results changes no file."""
    figure.savefig(out / f"{name}.png", dpi=200)
    figure.savefig(out / f"{name}.pdf", metadata={"CreationDate": None})


def add_legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def plot_vs_batch(ax: Axes, values: pd.DataFrame, colors: dict, ylabel: str, title: str) -> None:
    """Mean ± std over seeds of `values.value` per series against batch size (log2 axis). Runs
    without a value (NaN: e.g. the target was never reached) are left out and the point is
    marked `k/n`, k of its n runs having a value."""
    ax.set(xlabel=BATCH_LABEL, ylabel=ylabel, title=title)
    if values.empty:  # the caller's warning says what was left out
        ax.text(0.5, 0.5, "no runs to show", ha="center", va="center", transform=ax.transAxes)
        return
    stats = values.groupby(["series", "batch_size"])["value"].agg(["mean", "std", "count", "size"]).reset_index()
    stats = stats[stats["count"] > 0]
    for series, line in stats.groupby("series"):
        ax.errorbar(line["batch_size"], line["mean"], yerr=line["std"].fillna(0), marker="o", capsize=3,
                    color=colors[series], label=series)
        for point in line[line["count"] < line["size"]].itertuples():
            ax.annotate(f"{point.count}/{point.size}", (point.batch_size, point.mean), xytext=(4, 4),
                        textcoords="offset points", fontsize="x-small", color=colors[series])
    batch_sizes = sorted(values["batch_size"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xlim(batch_sizes[0] / 1.5, batch_sizes[-1] * 1.5)
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.xaxis.set_minor_locator(NullLocator())
    add_legend(ax)


def plot_curve(ax: Axes, epochs: pd.DataFrame, column: str, colors: dict, scale: float = 1.0) -> None:
    """`column` against epoch, one line per series: the mean over seeds, shaded ± std."""
    for series, runs in epochs.groupby("series"):
        stats = runs.groupby("epoch")[column].agg(["mean", "std"]).fillna({"std": 0}) * scale
        ax.plot(stats.index, stats["mean"], marker=".", color=colors[series], label=series)
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=colors[series], alpha=0.2, linewidth=0)


def final_rows(epochs: pd.DataFrame) -> pd.DataFrame:
    return epochs.sort_values("epoch").groupby("run_dir").tail(1)


def accuracy_values(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(value=100 * rows["test_acc"])


def accuracy_vs_batch(epochs: pd.DataFrame, colors: dict, out: Path) -> None:
    figure, axes = new_figure(1)
    plot_vs_batch(axes[0][0], accuracy_values(final_rows(epochs)), colors, ACCURACY_LABEL,
                  "Final test accuracy (mean ± std over seeds)")
    save(figure, out, "accuracy_vs_batch")


def learning_curves(epochs: pd.DataFrame, colors: dict, out: Path) -> None:
    """Test accuracy (top) and training loss (bottom) against epoch, one column per batch size."""
    batch_sizes = sorted(epochs["batch_size"].unique())
    figure, axes = new_figure(len(batch_sizes), 2, sharex=True, sharey="row")
    for column, batch_size in enumerate(batch_sizes):
        runs = epochs[epochs["batch_size"] == batch_size]
        top, bottom = axes[0][column], axes[1][column]
        plot_curve(top, runs, "test_acc", colors, scale=100)
        plot_curve(bottom, runs, "train_loss", colors)
        top.set(title=f"batch {batch_size}", ylabel=ACCURACY_LABEL if column == 0 else None)
        bottom.set(xlabel="Epoch", ylabel="Training loss (cross-entropy)" if column == 0 else None)
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    add_legend(axes[0][0])
    save(figure, out, "learning_curves")


def time_to_target(epochs: pd.DataFrame, target_acc: float) -> pd.DataFrame:
    """Per run, the first epoch with test accuracy >= target, the optimizer steps up to it, the
    training seconds those steps take at the run's median speed (`seconds_per_step`) and the noise
    scale measured then; NaN for a run that never got there."""
    reached = epochs[epochs["test_acc"] >= target_acc].sort_values("epoch").groupby("run_dir").head(1)
    runs = epochs[["run_dir", "series", "batch_size"]].drop_duplicates()
    times = runs.merge(reached.reindex(columns=["run_dir", "epoch", "step", "noise_scale"]), on="run_dir", how="left")
    return times.assign(train_seconds=times["step"] * times["run_dir"].map(seconds_per_step(epochs)))


def seconds_per_step(epochs: pd.DataFrame) -> pd.Series:
    """Per run, the median over its epochs of training seconds (evaluation excluded) per optimizer
    step. The median, because a process's first epoch also pays its start-up (torch.compile, cuDNN's
    autotuning) once: summed, it would charge whichever run of a sweep came first with all of it."""
    ordered = epochs.sort_values(["run_dir", "epoch"])
    by_run = ordered.groupby("run_dir")
    seconds = by_run["train_seconds"].diff().fillna(ordered["train_seconds"])
    steps = by_run["step"].diff().fillna(ordered["step"])
    return (seconds / steps).groupby(ordered["run_dir"]).median()


def default_target(epochs: pd.DataFrame) -> float:
    """The highest test accuracy, in whole percent, that every series reached at every batch size
    in some run: so the time-to-target figure has every point. Rounded before it is floored: 100 * 0.29
    is 28.999999999999996 in floating point, and a cell whose best is 29 % has reached 29 %."""
    best = epochs.groupby(["series", "batch_size"])["test_acc"].max().min()
    return math.floor(round(100 * best, 9)) / 100


def warn_left_out(figure: str, wanted: pd.DataFrame, plotted: pd.DataFrame, why: str) -> None:
    """A warning naming the (series, batch size) pairs of `wanted` that `plotted` lacks."""
    keys = ["series", "batch_size"]
    missing = wanted[keys].drop_duplicates().merge(plotted[keys].drop_duplicates(), how="left", indicator=True)
    missing = missing[missing["_merge"] == "left_only"].sort_values(keys)
    if not missing.empty:
        pairs = ", ".join(f"{row.series} at batch {row.batch_size}" for row in missing.itertuples())
        log.warning("%s leaves out %s: %s", figure, pairs, why)


def time_to_target_figure(epochs: pd.DataFrame, colors: dict, out: Path, target_acc: float) -> None:
    times = time_to_target(epochs, target_acc)
    best = 100 * epochs["test_acc"].max()
    if times["epoch"].isna().all():
        log.warning("time_to_target has nothing to plot: no run reached %g %% test accuracy (the best reached "
                    "%.2f %%); pass a lower --target-acc", 100 * target_acc, best)
    else:
        warn_left_out("time_to_target", times, times[times["epoch"].notna()],
                      f"no run reached {100 * target_acc:g} % test accuracy")
    figure, axes = new_figure(2)
    note = f"to {100 * target_acc:g} % test accuracy"
    plot_vs_batch(axes[0][0], times.assign(value=times["epoch"]), colors, "Epochs", f"Epochs {note}")
    plot_vs_batch(axes[0][1], times.assign(value=times["train_seconds"]), colors,
                  "Training time (s, median speed)", f"Training time {note}")
    reached = times["epoch"].notna().sum()
    figure.suptitle(f"{reached} of {len(times)} runs reached {100 * target_acc:g} % test accuracy "
                    "(k/n: mean over the k of n seeds that did)")
    save(figure, out, "time_to_target")


def steps_to_target_figure(epochs: pd.DataFrame, colors: dict, out: Path, target_acc: float) -> None:
    """Optimizer steps to `target_acc` against batch size, log-log (Shallue et al. 2018): per series
    the mean over the seeds that got there, a dashed perfect-scaling line (steps ∝ 1/batch) through
    its smallest batch, and a dotted mark on the batch axis at the measured B_simple (the noise
    scale when the target was reached, mean over those runs; `noise_scale_every` turns it on)."""
    times = time_to_target(epochs, target_acc)
    reached = times[times["step"].notna()]
    if reached.empty:
        log.warning("no run reached %g %% test accuracy: steps_to_target not drawn (see --target-acc)",
                    100 * target_acc)
        return
    figure, axes = new_figure(1)
    ax = axes[0][0]
    plot_vs_batch(ax, times.assign(value=times["step"]), colors, "Optimizer steps (log scale)",
                  f"Steps to {100 * target_acc:g} % test accuracy")
    ax.set_yscale("log")
    for axis_ticks in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_ticks(FuncFormatter(lambda value, _: f"{value:g}"))
    batch_sizes = pd.Series(sorted(times["batch_size"].unique()), dtype=float)
    low, high = ax.get_xlim()
    for series, runs in reached.groupby("series"):
        steps = runs.groupby("batch_size")["step"].mean()
        ax.plot(batch_sizes, steps.iloc[0] * steps.index[0] / batch_sizes, linestyle="--", color=colors[series],
                alpha=0.5)
        noise_scale = runs["noise_scale"].mean()
        if pd.notna(noise_scale):
            ax.axvline(noise_scale, linestyle=":", color=colors[series], label=f"B_simple {noise_scale:.0f}: {series}")
            low, high = min(low, noise_scale / 1.5), max(high, noise_scale * 1.5)
    ax.plot([], [], linestyle="--", color="gray", label="perfect scaling (steps ∝ 1/batch)")
    ax.set_xlim(low, high)
    add_legend(ax)
    save(figure, out, "steps_to_target")


def nearest_to_steps(epochs: pd.DataFrame, steps: int) -> pd.DataFrame:
    """Per run, the evaluation whose optimizer-step count is nearest `steps`, if within STEP_TOLERANCE."""
    distance = (epochs["step"] - steps).abs()
    near = epochs[distance <= STEP_TOLERANCE * steps].assign(distance=distance)
    return near.sort_values("distance").groupby("run_dir").head(1)


def default_steps(epochs: pd.DataFrame) -> int:
    """The step count at which the most (series, batch size) pairs have an evaluation; the largest on ties."""
    def coverage(steps: int) -> int:
        return len(nearest_to_steps(epochs, steps)[["series", "batch_size"]].drop_duplicates())

    return int(max(epochs["step"].unique(), key=lambda steps: (coverage(steps), steps)))


def gradient_budget(epochs: pd.DataFrame, colors: dict, out: Path, steps: int | None) -> None:
    """Accuracy against batch size at an equal number of samples processed (equal epochs: equal
    gradient computations), next to the same at an equal number of optimizer steps."""
    common_epoch = int(epochs.groupby("run_dir")["epoch"].max().min())
    steps = steps or default_steps(epochs)
    figure, axes = new_figure(2, sharey=True)
    plot_vs_batch(axes[0][0], accuracy_values(epochs[epochs["epoch"] == common_epoch]), colors, ACCURACY_LABEL,
                  f"Equal samples: {common_epoch} epochs")
    at_steps = nearest_to_steps(epochs, steps)
    warn_left_out(f"gradient_budget's equal-steps panel ({steps} steps)", epochs, at_steps,
                  f"no evaluation within {100 * STEP_TOLERANCE:g} % of {steps} optimizer steps "
                  "(--steps sets the count)")
    plot_vs_batch(axes[0][1], accuracy_values(at_steps), colors, ACCURACY_LABEL,
                  f"Equal steps: {steps} optimizer steps")
    save(figure, out, "gradient_budget")


def write_all(epochs: pd.DataFrame, out: Path, target_acc: float | None, steps: int | None = None) -> None:
    """Every figure of the report into `out`, from the per-epoch rows of the runs to plot;
    `target_acc` None: `default_target`."""
    if epochs.empty:
        log.warning("no completed runs with metrics: no figures written")
        return
    target_acc = default_target(epochs) if target_acc is None else target_acc
    colors = {series: f"C{i}" for i, series in enumerate(sorted(epochs["series"].unique()))}
    accuracy_vs_batch(epochs, colors, out)
    learning_curves(epochs, colors, out)
    time_to_target_figure(epochs, colors, out, target_acc)
    steps_to_target_figure(epochs, colors, out, target_acc)
    gradient_budget(epochs, colors, out, steps)
