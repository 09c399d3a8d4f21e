"""Reports: sngm-bench run folders -> a table with one row per run, one with a row per epoch,
the accuracy table (Markdown, CSV, LaTeX) and the figures; `sngm-bench-report` is the command line.

Runs are read through their files (`.hydra/config.yaml`, `summary.json`, `metrics.csv`), never
their folder names. A run is what its resolved config trains (`sngm_bench.identity`), seed
included: folders that hold the same run count once. Every readable run is kept with its status,
so a failed or diverged run shows in the table instead of vanishing; statistics and figures use
completed runs only.

The accuracy table holds, per optimizer (rows) and batch size (columns), the final test
accuracy over seeds as `mean ± std (n)`. Where several learning rates were swept for a cell,
one is chosen by `--select-by` (default: the best mean final test accuracy over seeds;
`final_holdout_acc`: that of the held-out training images, for runs trained with
`dataset.holdout_images`); an LR with a seed that did not complete (diverged, failed, ...)
ranks below every LR whose seeds all completed. Two LRs are compared on the seeds both ran, so that
more seeds at some LRs (a grid at seed 0, then seeds 1 and 2 at its best LRs) do not decide the
choice by their draw: the chosen LR beats the most others (`pairwise_wins`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sngm_bench.errors import UserError
from sngm_bench.identity import ADDED_KEYS, training_config
from sngm_bench.records import METRICS_FILE, SUMMARY_FILE, load_summary
from sngm_bench.run_folder import live_status

log = logging.getLogger(__name__)

CONFIG_FILE = Path(".hydra") / "config.yaml"
HYDRA_FILE = Path(".hydra") / "hydra.yaml"
COMPLETED = "completed"

# Report column -> key of the resolved run config (or keys, the first found: records written before
# the batch-size scaling rule moved from the schedule to each optimizer keep it under schedule).
CONFIG_COLUMNS = {
    "name": "name", "dataset": "dataset.name", "subset": "dataset.subset", "holdout_images": "dataset.holdout_images",
    "model": "model.name", "width": "model.width", "optimizer": "optimizer.name", "lr": "optimizer.lr",
    "lr_factor": "lr_factor",
    "momentum": "optimizer.momentum", "weight_decay": "optimizer.weight_decay", "schedule": "schedule.decay",
    "warmup_epochs": "schedule.warmup_epochs", "scaling": ("optimizer.scaling", "schedule.scaling"),
    "base_batch_size": ("optimizer.base_batch_size", "schedule.base_batch_size"), "batch_size": "batch_size",
    "epochs_planned": "epochs", "seed": "seed", "precision": "precision", "norm": "optimizer.norm",
}
# The value of a column that records from before its key lack: what they trained with (lr_factor
# predates identity.ADDED_KEYS, which holds the later ones).
DEFAULTS = {"lr_factor": 1.0, **{column: ADDED_KEYS[key] for column, key in CONFIG_COLUMNS.items() if key in ADDED_KEYS}}
REQUIRED_COLUMNS = ["optimizer", "lr", "batch_size", "seed"]
LR_KEYS = ["lr", "lr_factor"]  # together they set a run's LR; a sweep over either is an LR grid
# The trained keys a table ranges over: its columns, each cell's LR grid and its seeds. A run's other
# trained keys are its setting: the runs of one optimizer with one setting are a series (a table row).
TABLE_KEYS = {CONFIG_COLUMNS[column] for column in ["batch_size", *LR_KEYS, "seed"]}
# --select-by: summary value averaged over seeds -> whether larger is better.
SELECTION_RULES = {"final_test_acc": True, "best_test_acc": True, "final_train_loss": False,
                   "final_holdout_acc": True}  # held-out training images (dataset.holdout_images)
UNREADABLE = (OSError, ValueError, TypeError, KeyError, yaml.YAMLError, OmegaConfBaseException)


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Every folder at or under `paths` that holds a summary.json or a Hydra `.hydra/config.yaml`."""
    found = set()
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError(f"not a folder: {path}")
        found |= {p.parent for p in path.rglob(SUMMARY_FILE)}
        found |= {p.parents[1] for p in path.rglob("config.yaml") if p.parent.name == ".hydra"}
    return sorted(found)


def read_run(run_dir: Path) -> tuple[dict, str]:
    """One run as a flat dict (the config columns, its `setting`, then every scalar of summary.json),
    and its identity: the JSON text of what its config trains. The config is Hydra's, or where
    Hydra wrote none (hydra.output_subdir=null) the one summary.json records."""
    # No summary.json yet: a run still setting up (loading its data), or one that died doing so.
    summary = load_summary(run_dir) if (run_dir / SUMMARY_FILE).exists() else {"status": "running"}
    source = CONFIG_FILE if (run_dir / CONFIG_FILE).exists() or "config" not in summary else SUMMARY_FILE
    if source == CONFIG_FILE:
        config = OmegaConf.load(run_dir / CONFIG_FILE)
    elif isinstance(summary["config"], dict):
        config = OmegaConf.create(summary["config"])
    else:
        raise ValueError(f"{SUMMARY_FILE} records a config that is no JSON object")
    trained = training_config(config)
    identity = json.dumps(trained, sort_keys=True, default=str)
    row = {column: select(config, keys, DEFAULTS.get(column)) for column, keys in CONFIG_COLUMNS.items()}
    row["setting"] = {key: value for key, value in trained.items() if key not in TABLE_KEYS}
    if row["optimizer"] is None and OmegaConf.select(config, "optimizer._target_"):
        row["optimizer"] = optimizer_choice(run_dir) or config.optimizer._target_
    missing = [c for c in REQUIRED_COLUMNS if row[c] is None]
    if missing:
        raise ValueError(f"{source} has no {', '.join(CONFIG_COLUMNS[c] for c in missing)}")
    scalars = {k: v for k, v in summary.items() if isinstance(v, (str, int, float, bool)) and k not in row}
    status = live_status(run_dir, summary.get("status", "unknown"))
    data = summary.get("data_fingerprint")  # its files' digests; not recorded by an earlier sngm-bench
    fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12] if data else None
    return {**row, **scalars, "data_fingerprint": fingerprint, "status": status, "run_dir": str(run_dir)}, identity


def one_row_per_run(runs: Iterable[tuple[dict, str]]) -> list[dict]:
    """Folders that hold the same run (same identity) count once, with a warning naming them: a
    completed copy is kept if there is one, else the first folder by name."""
    copies = defaultdict(list)
    for row, identity in runs:
        copies[identity].append(row)
    kept = []
    for rows in copies.values():
        rows = sorted(rows, key=lambda row: (row["status"] != COMPLETED, row["run_dir"]))
        kept.append(rows[0])
        if len(rows) > 1:
            log.warning("%d folders hold the same run (same training config and seed); counting %s once, "
                        "ignoring %s", len(rows), rows[0]["run_dir"], ", ".join(row["run_dir"] for row in rows[1:]))
    return kept


def optimizer_choice(run_dir: Path) -> str | None:
    """The optimizer config a run chose (`optimizer=NAME`), as Hydra recorded it: the report's name
    for a `_target_` optimizer whose file sets no `name`."""
    try:
        return OmegaConf.select(OmegaConf.load(run_dir / HYDRA_FILE), "hydra.runtime.choices.optimizer")
    except UNREADABLE:
        return None


def select(config, keys: str | tuple[str, ...], default=None):
    """The value of the first of `keys` that `config` has, else `default`."""
    for key in (keys,) if isinstance(keys, str) else keys:
        if (value := OmegaConf.select(config, key, default=None)) is not None:
            return value
    return default


def collect_runs(paths: Iterable[Path]) -> pd.DataFrame:
    """One row per run found under `paths`; unreadable folders are skipped with a warning."""
    paths = list(paths)
    read = []
    for run_dir in find_run_dirs(paths):
        try:
            read.append(read_run(run_dir))
        except UNREADABLE as err:
            log.warning("skipping %s: %s", run_dir, str(err).splitlines()[0] if str(err) else type(err).__name__)
    rows = one_row_per_run(read)
    if not rows:
        raise UserError(f"no readable sngm-bench run folders under {', '.join(map(str, paths))}")
    runs = pd.DataFrame(rows).sort_values(["optimizer", "batch_size", "lr", "lr_factor", "seed"], ignore_index=True)
    warn_of_other_data(runs)
    return label_settings(runs)


def warn_of_other_data(runs: pd.DataFrame) -> None:
    """A warning for each dataset whose runs were trained on files that differ (their summaries'
    `data_fingerprint`), so their numbers may not compare. Runs that recorded none are left out."""
    for dataset, group in runs.dropna(subset=["data_fingerprint"]).groupby("dataset"):
        copies = group.groupby("data_fingerprint", sort=False)["run_dir"].agg(list)
        if len(copies) > 1:
            log.warning("the %s runs were trained on %d different copies of its files (data_fingerprint in "
                        "summary.json): %s", dataset, len(copies),
                        "; ".join(f"{len(dirs)} like {dirs[0]}" for dirs in copies))


def label_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """Replaces the runs' `setting` dicts by two labels. `protocol`: `key=value` for each key outside
    `optimizer.*` that differs between all the runs ('' when they share one protocol). `series`: the
    optimizer, plus `key=value` for each key of the protocol and each key of the setting that differs
    between runs of that optimizer (an optimizer's own keys, like its scaling rule, set apart nothing
    across optimizers), so that rows trained under different protocols never share a bare name."""
    optimizers = runs["optimizer"].map(str)
    protocols = runs["setting"].map(lambda setting: {k: v for k, v in setting.items() if not k.startswith("optimizer.")})
    across = varying_keys(protocols)
    series = optimizers.copy()
    for _, group in runs.groupby(optimizers):
        keys = sorted(set(varying_keys(group["setting"])) | set(across))
        series[group.index] += group["setting"].map(lambda setting: f" {labelled(setting, keys)}" if keys else "")
    return runs.drop(columns="setting").assign(series=series, protocol=protocols.map(lambda p: labelled(p, across)))


def varying_keys(settings: pd.Series) -> list[str]:
    """The keys of the dicts `settings` whose values are not the same in all, sorted."""
    def text(value):
        return json.dumps(value, sort_keys=True, default=str)

    keys = sorted({key for setting in settings for key in setting})
    return [key for key in keys if len({text(setting.get(key)) for setting in settings}) > 1]


def labelled(setting: dict, keys: list[str]) -> str:
    """'key=value key=value' of `setting` for `keys`."""
    return " ".join(f"{key}={setting.get(key)}" for key in keys)


def read_metrics(run: pd.Series) -> pd.DataFrame | None:
    """A run's metrics.csv plus optimizer steps and cumulative training seconds (evaluation excluded);
    None when the run has no finished epoch."""
    path = Path(run["run_dir"]) / METRICS_FILE
    if not path.exists():
        return None
    try:
        metrics = pd.read_csv(path)
        if metrics.empty:
            return None
        images_per_epoch = run["steps_per_epoch"] * run["batch_size"]
        return metrics.assign(step=metrics["epoch"] * run["steps_per_epoch"],
                              train_seconds=(images_per_epoch / metrics["images_per_second"]).cumsum())
    except UNREADABLE + (pd.errors.ParserError,) as err:
        log.warning("skipping the metrics of %s: %s", run["run_dir"], err)
        return None


def collect_epochs(runs: pd.DataFrame) -> pd.DataFrame:
    """The long per-epoch table: every row of every run's metrics.csv (`lr`: that epoch's last LR),
    with the run's identity (`base_lr`: the run's `optimizer.lr`)."""
    identity = ["run_dir", "series", "optimizer", "batch_size", "base_lr", "lr_factor", "seed", "status"]
    frames = [m.assign(**run.rename({"lr": "base_lr"})[identity]) for _, run in runs.iterrows()
              if (m := read_metrics(run)) is not None]
    if not frames:
        return pd.DataFrame(columns=[*identity, "epoch", "step", "train_seconds", "test_acc", "train_loss"])
    return pd.concat(frames, ignore_index=True)


def status_counts(statuses: pd.Series) -> str:
    """'diverged 2, failed 1': how many runs of a cell did not complete, by status."""
    counts = statuses[statuses != COMPLETED].value_counts().sort_index()
    return ", ".join(f"{status} {count}" for status, count in counts.items())


def aggregate(runs: pd.DataFrame, select_by: str = "final_test_acc") -> pd.DataFrame:
    """One row per (series, batch size, LR): statistics over the completed seeds, the other runs'
    statuses, `selected`, true for the LR that `select_by` picks in each (series, batch size), and
    `grid_edge`, true where that LR is the smallest or largest tried there."""
    check_selectable(runs, select_by)
    keys = ["series", "batch_size", *LR_KEYS]
    completed = runs[runs["status"] == COMPLETED].reindex(columns=[*keys, "seed", *SELECTION_RULES, "peak_lr",
                                                                   "wall_seconds", "images_per_second"])
    stats = completed.groupby(keys).agg(
        n=("seed", "size"), mean_final_test_acc=("final_test_acc", "mean"),
        std_final_test_acc=("final_test_acc", "std"), mean_best_test_acc=("best_test_acc", "mean"),
        score=(select_by, "mean"), peak_lr=("peak_lr", "first"), mean_wall_seconds=("wall_seconds", "mean"),
        mean_images_per_second=("images_per_second", "mean"))
    cells = runs.groupby(keys).agg(runs=("status", "size"), not_completed=("status", status_counts)).join(stats)
    cells = cells.join(pairwise_wins(runs, select_by)).reset_index().fillna({"n": 0}).astype({"n": int})
    cells = cells.assign(selected=cells.index.isin(selected_lrs(cells, select_by)))
    return cells.assign(grid_edge=grid_edges(cells))


def pairwise_wins(runs: pd.DataFrame, select_by: str) -> pd.Series:
    """Per (series, batch size, LR) whose seeds all completed: how many of the other such LRs there it
    beats on `select_by` averaged over the seeds both ran (a tie counts a half). Over the same seeds
    this ranks LRs as their means do. Over different seeds (a grid at seed 0, then seeds 1 and 2 at
    some LRs) no LR wins or loses by the draw of seeds the other lacks: one with a single seed meets
    one with three on that seed, two with three seeds meet on all three."""
    keys = ["series", "batch_size", *LR_KEYS]
    complete = (runs["status"] == COMPLETED).groupby([runs[key] for key in keys]).transform("all")
    wins = {}
    for _, cell in runs[complete].groupby(["series", "batch_size"]):
        values = {lr: dict(zip(lr_runs["seed"], lr_runs[select_by])) for lr, lr_runs in cell.groupby(keys)}
        for lr, mine in values.items():
            wins[lr] = 0.0
            for other, theirs in values.items():
                shared = mine.keys() & theirs.keys()
                if other == lr or not shared:
                    continue
                difference = sum(mine[seed] - theirs[seed] for seed in shared)
                wins[lr] += 0.5 if difference == 0 else float((difference > 0) == SELECTION_RULES[select_by])
    return pd.Series(list(wins.values()), index=pd.MultiIndex.from_tuples(list(wins), names=keys),
                     name="pairwise_wins", dtype=float)


def check_selectable(runs: pd.DataFrame, select_by: str) -> None:
    """Raise UserError when a completed run has no value of `select_by`: a run trained without held-out
    images has no `final_holdout_acc`, and an LR would be chosen among the others without a word."""
    completed = runs[runs["status"] == COMPLETED]
    missing = completed[select_by].isna().sum() if select_by in completed else len(completed)
    if missing:
        hint = " (trained without dataset.holdout_images)" if select_by == "final_holdout_acc" else ""
        raise UserError(f"--select-by {select_by}: {missing} of the {len(completed)} completed runs have no "
                        f"{select_by}{hint}; choose another --select-by, or report on runs that all have it")


def selected_lrs(cells: pd.DataFrame, select_by: str) -> pd.Index:
    """Index of the chosen LR per (series, batch size): complete LRs first, then the most pairwise wins,
    then the best mean of the rule's value over all its seeds."""
    ranked = cells.assign(incomplete=cells["not_completed"] != "").sort_values(
        ["incomplete", "pairwise_wins", "score"], ascending=[True, False, not SELECTION_RULES[select_by]],
        na_position="last")
    return ranked.groupby(["series", "batch_size"]).head(1).index


def grid_edge_sides(cells: pd.DataFrame) -> pd.Series:
    """'smallest' or 'largest' where a selected LR (optimizer.lr x lr_factor) is that end of several
    tried for its (series, batch size), else '': the grid did not bracket the best LR there, so
    widen it on that side."""
    run_lr = cells["lr"] * cells["lr_factor"]
    tried = run_lr.groupby([cells["series"], cells["batch_size"]])
    smallest, largest = run_lr == tried.transform("min"), run_lr == tried.transform("max")
    at_edge = cells["selected"] & (tried.transform("nunique") > 1) & (smallest | largest)
    return smallest.map({True: "smallest", False: "largest"}).where(at_edge, "")


def grid_edges(cells: pd.DataFrame) -> pd.Series:
    """Whether each selected LR is at its grid's edge (see grid_edge_sides)."""
    return grid_edge_sides(cells) != ""


def swept_lr_keys(frame: pd.DataFrame) -> list[str]:
    """Those of optimizer.lr and lr_factor that took several values for some (series, batch size)."""
    counts = frame.groupby(["series", "batch_size"])[LR_KEYS].nunique().max()
    return [key for key in LR_KEYS if counts[key] > 1]


def format_cell(cell: pd.Series, show_lr: list[str]) -> str:
    """'72.31 ± 0.42 (2)', then any runs that did not complete, then the chosen value of each swept
    LR key (`show_lr`), marked '(grid edge)' where it is the smallest or largest tried."""
    parts = []
    if cell["n"]:
        spread = f" ± {100 * cell['std_final_test_acc']:.2f}" if cell["n"] > 1 else ""
        parts.append(f"{100 * cell['mean_final_test_acc']:.2f}{spread} ({cell['n']})")
    if cell["not_completed"]:
        parts.append(cell["not_completed"])
    if show_lr:
        edge = " (grid edge)" if cell["grid_edge"] else ""
        parts.append(" ".join(f"{key} {cell[key]:g}" for key in show_lr) + edge)
    return "; ".join(parts)


def accuracy_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Series (rows) x batch size (columns) of the selected LRs' formatted cells; '–' where nothing ran."""
    chosen = cells[cells["selected"]]
    text = chosen.assign(text=chosen.apply(format_cell, axis=1, show_lr=swept_lr_keys(cells)))
    table = text.pivot(index="series", columns="batch_size", values="text").fillna("–")
    table.columns = [f"batch {b}" for b in table.columns]
    table.index.name = "optimizer"
    return table


def table_rows(table: pd.DataFrame) -> list[list[str]]:
    """The header, then one list of strings per row, the row name first."""
    body = ([str(name), *map(str, row)] for name, row in zip(table.index, table.values))
    return [[table.index.name, *table.columns], *body]


def markdown_line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def to_markdown(table: pd.DataFrame) -> str:
    header, *body = table_rows(table)
    return "\n".join(map(markdown_line, [header, ["---"] * len(header), *body])) + "\n"


def latex_escape(text: str) -> str:
    for plain, latex in [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                         ("±", r"$\pm$"), ("–", "--")]:
        text = text.replace(plain, latex)
    return text


def latex_line(cells: list[str]) -> str:
    return " & ".join(latex_escape(c) for c in cells) + r" \\"


def to_latex(table: pd.DataFrame) -> str:
    header, *body = map(latex_line, table_rows(table))
    columns = "l" + "r" * len(table.columns)
    return "\n".join([rf"\begin{{tabular}}{{{columns}}}", r"\hline", header, r"\hline", *body, r"\hline",
                      r"\end{tabular}"]) + "\n"


def caption(runs: pd.DataFrame, cells: pd.DataFrame, select_by: str) -> str:
    rule = (f"; LR chosen per cell by the best mean {select_by} over seeds, two LRs compared on the seeds both ran"
            if swept_lr_keys(runs) else "")
    edge = ("; (grid edge): the chosen LR is the smallest or largest tried, so the grid may not hold the best LR"
            if cells["grid_edge"].any() else "")
    count = f"{len(runs)} run{'' if len(runs) == 1 else 's'}"
    return (f"Final test accuracy (%), mean ± std over seeds (n completed runs), {count}; "
            f"runs that did not complete are counted by status{rule}{edge}.")


def distinct(runs: pd.DataFrame, column: str) -> str:
    """The column's distinct recorded values, sorted, joined by ', ' ('?' where none is recorded)."""
    if column not in runs:
        return "?"
    values = runs[column].dropna().unique()
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(values)) or "?"


def factors_by_batch(runs: pd.DataFrame) -> str:
    """The `lr_factor`s the runs tried: one list where every batch size tried the same, else one per
    batch size ('0.5, 1 at batch 4096 and 0.5 at batch 8192')."""
    grids = {batch_size: distinct(group, "lr_factor") for batch_size, group in runs.groupby("batch_size")}
    if len(set(grids.values())) == 1:
        return next(iter(grids.values()))
    return " and ".join(f"{grid} at batch {batch_size}" for batch_size, grid in grids.items())


def code_versions(runs: pd.DataFrame) -> str:
    """The commits the runs were trained from, sorted; one whose working tree differed from it says so,
    with the hash of that difference its records give (runs of one commit with other changes
    differ in it)."""
    labels = set()
    for _, row in runs.reindex(columns=["git_commit", "git_dirty", "git_diff_hash"]).iterrows():
        if pd.isna(row["git_commit"]):
            continue
        changed = pd.notna(row["git_dirty"]) and bool(row["git_dirty"])
        labels.add(f"{row['git_commit']} with uncommitted changes (diff hash {row['git_diff_hash']})"
                    if changed else str(row["git_commit"]))
    return ", ".join(sorted(labels)) or "?"


def provenance(runs: pd.DataFrame) -> str:
    """Where the runs' numbers come from, read from their records: protocol (and data that is not the
    official release, which compares with, but does not equal, published numbers), seeds, LR grid,
    hardware, code."""
    subset = ""
    if runs["subset"].notna().any():  # runs without one trained on the full set: said, not dropped with the NaN
        subset = (f" (the full training set and {distinct(runs, 'subset')}-image training subsets)"
                  if runs["subset"].isna().any() else f" ({distinct(runs, 'subset')}-image training subset)")
    if runs["holdout_images"].any():
        subset += f" ({distinct(runs, 'holdout_images')} training images held out)"
    if copies := int(runs.get("data_official", pd.Series(dtype=object)).eq(False).sum()):
        runs_on = "" if copies == len(runs) else f" for {copies} of the {len(runs)} runs"
        subset += f" (not the official release's files{runs_on}: data_official in summary.json)"
    protocol = (f"{distinct(runs, 'dataset')}{subset}, {distinct(runs, 'model')} width {distinct(runs, 'width')}, "
                f"{distinct(runs, 'epochs_planned')} epochs, {distinct(runs, 'schedule')} decay after "
                f"{distinct(runs, 'warmup_epochs')} warmup epochs, {distinct(runs, 'precision')}")
    grids = "; ".join(
        f"{optimizer} lr {distinct(group, 'lr')} at batch {distinct(group, 'base_batch_size')}, scaled "
        f"{distinct(group, 'scaling')}, x lr_factor {factors_by_batch(group)}"
        for optimizer, group in runs.groupby("series"))
    hardware = (f"{distinct(runs, 'device_name')} x {distinct(runs, 'world_size')} process(es), "
                f"torch {distinct(runs, 'torch_version')}")
    return (f"Protocol: {protocol}. Seeds: {distinct(runs, 'seed')}. LR grid: {grids}. "
            f"Hardware: {hardware}. Code: {code_versions(runs)}.")


def write_report(paths: Iterable[Path], out: Path, target_acc: float | None = None,
                 select_by: str = "final_test_acc", steps: int | None = None, within: float = 1.0) -> str:
    """Read the runs under `paths`, write tables, CSVs, caption.md, claims.md and figures into `out`;
    return the Markdown table."""
    from sngm_bench import claims, figures  # matplotlib is imported only when figures are drawn

    runs = collect_runs(paths)
    epochs = collect_epochs(runs)
    cells = aggregate(runs, select_by)
    table = accuracy_table(cells)
    markdown = f"{caption(runs, cells, select_by)}\n\n{to_markdown(table)}"
    keys = ["series", "batch_size", "base_lr", "lr_factor"]
    chosen = cells.loc[cells["selected"], ["series", "batch_size", *LR_KEYS]].rename(columns={"lr": "base_lr"})
    selected_epochs = epochs[epochs["status"] == COMPLETED].merge(chosen, on=keys)
    try:  # an existing --out may be read-only, or the disk full: every write, not only the folder's
        out.mkdir(parents=True, exist_ok=True)
        runs.to_csv(out / "runs.csv", index=False)
        epochs.to_csv(out / "epochs.csv", index=False)
        cells.to_csv(out / "aggregate.csv", index=False)
        table.to_csv(out / "table.csv")
        (out / "table.md").write_text(markdown)
        (out / "table.tex").write_text(to_latex(table))
        (out / "caption.md").write_text(provenance(runs) + "\n")
        (out / "claims.md").write_text(claims.verdict(runs, cells, select_by, within))
        figures.write_all(selected_epochs, out, target_acc, steps)
    except OSError as err:
        raise UserError(f"cannot write the report to {out}: {err.strerror or err}; choose another --out") from None
    return markdown


def fraction(text: str) -> float:
    """--target-acc: an accuracy as a fraction, as metrics.csv records it (the tables print percent)."""
    value = float(text)
    if not 0 < value <= 1:
        hint = f"; for {value:g} % write {value / 100:g}" if 1 < value <= 100 else ""
        raise argparse.ArgumentTypeError(f"{text} is not an accuracy between 0 and 1{hint}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of optimizer steps")
    return value


def points(text: str) -> float:
    """--within: a margin of test accuracy in points; a negative one (or nan) would turn claims.md's tests around."""
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a number of points of accuracy between 0 and 100")
    return value


def _fail(message: str) -> None:
    """End the command with `message` as one line on stderr and exit code 2."""
    print(f"sngm-bench-report: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sngm-bench-report", description="Tables and figures from sngm-bench run folders (searched recursively).")
    parser.error = _fail  # argparse's own would print the whole usage before its line
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run folders or folders that hold them")
    parser.add_argument("--out", type=Path, default=Path("report"), help="folder for the files (default: report)")
    parser.add_argument("--target-acc", type=fraction,
                        help="test accuracy (0-1) for the time-to-target figure (default: the highest accuracy, in "
                        "whole percent, that every optimizer reached at every batch size)")
    parser.add_argument("--select-by", choices=list(SELECTION_RULES), default="final_test_acc",
                        help="per optimizer and batch size, keep the LR with the best mean of this over seeds "
                        "(two LRs compared on the seeds both ran)")
    parser.add_argument("--steps", type=positive_int, help="optimizer steps of the equal-steps view (default: the step "
                        "count at which the most optimizer/batch-size pairs have an evaluation)")
    parser.add_argument("--within", type=points, default=1.0, help="claims.md: points of test accuracy; a batch size "
                        "keeps an optimizer's best accuracy when its 95 %% interval lies above best − within, and "
                        "block-wise normalization does not help when its gain's interval lies below +within "
                        "(default: 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="sngm-bench-report: warning: %(message)s", level=logging.WARNING)
    try:
        markdown = write_report(args.paths, args.out, args.target_acc, args.select_by, args.steps, args.within)
    except UserError as err:
        _fail(str(err))
    print(markdown)
    print(f"wrote tables, CSVs and figures to {args.out}")


if __name__ == "__main__":  # python -m sngm_bench.report, the same as sngm-bench-report
    main()
