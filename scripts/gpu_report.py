"""Results of scripts/gpu_check.sh and gpu_campaign.sh, checked and summarized.

`python scripts/gpu_report.py train RUNS OUT` checks the training run under RUNS (completed, test
accuracy above chance), prints its images/s and copies its metrics.csv and summary.json into OUT;
`... tables OUT` prints Markdown tables of that run and of OUT's bench_train.csv, bench_optim.csv and bench_optim_compile.csv;
`... unfinished RUNS` lists the checkpoints of the runs under RUNS that have not finished.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

from sngm_bench.report import to_markdown

CHANCE = 0.1  # CIFAR-10: ten classes


def check_training(runs: Path, out: Path) -> int:
    (summary_file,) = runs.glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    shutil.copy(summary_file, out / "train_summary.json")
    shutil.copy(summary_file.parent / "metrics.csv", out / "train_metrics.csv")
    metrics = pd.read_csv(summary_file.parent / "metrics.csv")
    print(f"status {summary['status']}, final test accuracy {summary.get('final_test_acc')}, "
          f"images/s by epoch {[round(v) for v in metrics['images_per_second']]} on {summary['device_name']}")
    above = summary["status"] == "completed" and summary["final_test_acc"] > CHANCE
    print("above chance" if above else f"NOT above chance ({CHANCE}) or not completed")
    return 0 if above else 1


def markdown(frame: pd.DataFrame) -> str:
    """The frame as a Markdown table, floats to 3 significant digits."""
    cells = frame.apply(lambda column: column.map(lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)))
    return to_markdown(cells.set_index(cells.columns[0])).rstrip("\n")


def tables(out: Path) -> str:
    parts = []
    if (out / "train_summary.json").exists():
        summary = json.loads((out / "train_summary.json").read_text())
        metrics = pd.read_csv(out / "train_metrics.csv")
        parts.append(f"**Training run** (`experiment=paper_cifar10`, batch {summary['batch_size']}): "
                     f"{summary['status']}, final test accuracy {summary.get('final_test_acc')}, images/s by epoch "
                     f"{', '.join(f'{v:.0f}' for v in metrics['images_per_second'])} (epoch 1 includes compilation), "
                     f"{summary['wall_seconds']:.0f} s in all.")
    if (out / "bench_train.csv").exists():
        rows = pd.read_csv(out / "bench_train.csv")
        columns = ["dataset", "image_size", "model", "batch_size", "precision", "channels_last", "compile",
                   *[c for c in ("optimizer_step_compiled",) if c in rows.columns], "images_per_second",
                   "reference_images_per_second", "throughput_vs_reference",
                   # older CSVs name the upper bound data_fraction, and lack data_fraction_in_step
                   *[c for c in ("data_fraction", "data_fraction_upper_bound", "data_fraction_in_step")
                     if c in rows.columns],
                   "optimizer_fraction", "mfu", "peak_memory_gib"]
        parts.append("**Training step** (scripts/bench_train.py --compare-reference)\n\n" + markdown(rows[columns]))
    for name, title in (("bench_optim", "**Optimizer step** (scripts/bench_optim.py)"),
                        ("bench_optim_compile", "**Optimizer step, compiled** (scripts/bench_optim.py --compile)")):
        if (out / f"{name}.csv").exists():
            rows = pd.read_csv(out / f"{name}.csv")
            columns = ["parameter_set", "optimizer", "median_ms", *[c for c in rows.columns if c.startswith("vs_")],
                       *[c for c in ("host_ms", "warmup_ms") if c in rows.columns]]  # older CSVs lack them
            parts.append(f"{title}\n\n" + markdown(rows[columns]))
    return "\n\n".join(parts)


def unfinished(runs: Path) -> list[Path]:
    """Checkpoints of the runs under `runs` that neither completed nor diverged."""
    return [path.with_name("checkpoint.pt") for path in sorted(runs.glob("*/summary.json"))
            if json.loads(path.read_text())["status"] not in ("completed", "diverged")
            and path.with_name("checkpoint.pt").exists()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="check the training run under RUNS, copy its records into OUT")
    train.add_argument("runs", type=Path)
    train.add_argument("out", type=Path)
    commands.add_parser("tables", help="Markdown tables of OUT's results").add_argument("out", type=Path)
    commands.add_parser("unfinished", help="checkpoints of unfinished runs under RUNS").add_argument("runs", type=Path)
    args = parser.parse_args()
    if args.command == "train":
        sys.exit(check_training(args.runs, args.out))
    elif args.command == "tables":
        print(tables(args.out))
    else:
        print("\n".join(str(path) for path in unfinished(args.runs)))


if __name__ == "__main__":
    main()
