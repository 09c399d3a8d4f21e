"""Results of scripts/gpu_check.sh and gpu_campaign.sh, checked, summarized and committed.

On the GPU machine (called by those scripts):
`python scripts/gpu_report.py train RUNS OUT` checks the training run under RUNS (completed, test
accuracy above chance), prints its images/s and copies its metrics.csv and summary.json into OUT;
`... tables OUT` prints Markdown tables of that run and of OUT's bench_train.csv, bench_optim.csv and bench_optim_compile.csv;
`... unfinished RUNS` lists the checkpoints of the runs under RUNS that have not finished.

Here, on the files a device call brought back (its `files_at`; docs/gpu.md):
`... commit-check FILES` files gpu_check.sh's output under results/bench/<device>-<date>/ and
`... commit-campaign FILES` files gpu_campaign.sh's runs under results/<name>/runs/; both then
rebuild the reports and the README's results with scripts/paper_figures.py.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pandas as pd

from sngm_bench.report import to_markdown

CHANCE = 0.1  # CIFAR-10: ten classes
ROOT = Path(__file__).resolve().parents[1]
CHECK_FILES = ("summary.md", "log.txt", "pytest.xml", "train_metrics.csv", "train_summary.json", "bench_train.csv",
               "bench_optim.csv", "bench_optim_compile.csv")
# The first line under summary.md's title, as gpu_lib.sh writes it.
SUMMARY_HEADER = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2}) \d{2}:\d{2} UTC; device: (?P<device>[^;]*); "
                            r"torch (?P<torch>\S+) .*; mode: (?P<mode>[\w-]+);", re.MULTILINE)
# The commit that made evaluation use BatchNorm's running statistics: runs of older code measured
# their test accuracy in BatchNorm's training mode, so a campaign's runs replace them.
EVAL_MODE_FIX = "6560f4c"


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
                   "optimizer_fraction", "mfu", "peak_memory_gib",
                   *[c for c in ("kernel_ms", "reference_kernel_ms", "data_kernel_ms") if c in rows.columns]]
        parts.append("**Training step** (scripts/bench_train.py --compare-reference)\n\n" + markdown(rows[columns]))
    for name, title in (("bench_optim", "**Optimizer step** (scripts/bench_optim.py)"),
                        ("bench_optim_compile", "**Optimizer step, compiled** (scripts/bench_optim.py --compile)")):
        if (out / f"{name}.csv").exists():
            rows = pd.read_csv(out / f"{name}.csv")
            columns = ["parameter_set", "optimizer", "median_ms", *[c for c in rows.columns if c.startswith("vs_")],
                       *[c for c in ("host_ms", "warmup_ms", "kernel_ms", "kernel_vs_sgd_fused")
                         if c in rows.columns]]  # older CSVs lack them
            parts.append(f"{title}\n\n" + markdown(rows[columns]))
    if (out / "bench_optim_compile.csv").exists():
        parts.append("**Compiled against eager** (the same process; compile_ms: the compiled step's warm-up less the "
                     "eager one's, paid once per run; break_even_steps: the steps a run needs to win it back)\n\n"
                     + markdown(compile_payoff(pd.read_csv(out / "bench_optim_compile.csv"))))
    return "\n\n".join(parts)


def compile_payoff(rows: pd.DataFrame) -> pd.DataFrame:
    """Each `+compile` row of bench_optim_compile.csv beside the eager row of its optimizer, measured
    in the same process: both steps, the compiled one's ratio to each baseline, what compiling
    costs once per run, and after how many steps that pays (none: the compiled step is no faster)."""
    compiled = rows[rows["optimizer"].str.endswith("+compile")].assign(
        eager=lambda frame: frame["optimizer"].str.removesuffix("+compile"))
    paired = compiled.merge(rows, left_on=["parameter_set", "eager"], right_on=["parameter_set", "optimizer"],
                            suffixes=("", "_eager"))
    saved_ms = paired["median_ms_eager"] - paired["median_ms"]
    compile_ms = paired["warmup_ms"] - paired["warmup_ms_eager"]
    return pd.DataFrame({
        "parameter_set": paired["parameter_set"], "optimizer": paired["optimizer"],
        "eager_ms": paired["median_ms_eager"], "compiled_ms": paired["median_ms"],
        **{column: paired[column] for column in rows.columns if column.startswith("vs_")},
        "compile_ms": compile_ms,
        "break_even_steps": [f"{cost / saved:,.0f}" if saved > 0 else "none" for cost, saved in zip(compile_ms, saved_ms)],
    })


def unfinished(runs: Path) -> list[Path]:
    """Checkpoints of the runs under `runs` that neither completed nor diverged."""
    return [path.with_name("checkpoint.pt") for path in sorted(runs.glob("*/summary.json"))
            if json.loads(path.read_text())["status"] not in ("completed", "diverged")
            and path.with_name("checkpoint.pt").exists()]


class CommitError(Exception):
    """Files that must not be committed as they are; the message says why."""


def header(summary_md: Path) -> dict:
    """Date, device, torch version and mode of a gpu_check.sh or gpu_campaign.sh summary.md;
    refuses a dry run's, whose numbers are no measurements."""
    found = SUMMARY_HEADER.search(summary_md.read_text()) if summary_md.exists() else None
    if not found:
        raise CommitError(f"{summary_md} is not the summary.md of gpu_check.sh or gpu_campaign.sh")
    if found["mode"] != "gpu":
        raise CommitError(f"{summary_md} is from a {found['mode']}: its numbers are no measurements")
    return found.groupdict()


def device_folder(device_name: str) -> str:
    """results/bench/'s name for a GPU: 'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA H100 PCIe' -> 'h100-pcie'."""
    model, *rest = device_name.removeprefix("NVIDIA ").split()
    return "-".join([model, *(word for word in rest if word in ("PCIe", "NVL"))]).lower()


def recorded_environments(files: Path) -> dict[str, set[tuple[str, str]]]:
    """The (device, torch version) pairs each result file records: the benchmark CSVs in their
    rows (bench_train.csv names its columns device_name and torch_version, bench_optim's device
    and torch), the training run in its summary."""
    found = {}
    for name, device, torch_version in (("bench_train.csv", "device_name", "torch_version"),
                                        ("bench_optim.csv", "device", "torch"),
                                        ("bench_optim_compile.csv", "device", "torch")):
        if (files / name).exists():
            rows = pd.read_csv(files / name)
            found[name] = set(zip(rows[device], rows[torch_version]))
    if (files / "train_summary.json").exists():
        summary = json.loads((files / "train_summary.json").read_text())
        found["train_summary.json"] = {(summary["device_name"], summary["torch_version"])}
    return found


def call_file(folder: Path, name: str, call: int) -> Path:
    """Where the `call`-th device call filed in `folder` puts its file `name`: `name` for the first,
    `name_2`, `name_3`, ... for later ones, so that every file of one call has the same number."""
    return folder / (name if call == 1 else f"{Path(name).stem}_{call}{Path(name).suffix}")


def next_call(folder: Path, summary_name: str) -> int:
    """The number of the next device call to be filed in `folder`, whose calls each filed a `summary_name`."""
    call = 1
    while call_file(folder, summary_name, call).exists():
        call += 1
    return call


def commit_check(files: Path, results: Path) -> Path:
    """Files gpu_check.sh's output in `results`/bench/<device>-<date>/ and returns that folder.

    Every file must come from the GPU named in summary.md, with its torch version. A later call
    of the same day and GPU (a rerun of what failed) adds its benchmark rows to the CSVs and its
    other files under numbered names (summary_2.md, log_2.txt, ...)."""
    top = header(files / "summary.md")
    for name, environments in recorded_environments(files).items():
        if environments != {(top["device"], top["torch"])}:
            raise CommitError(f"{name} records {sorted(environments)}, not summary.md's "
                              f"{top['device']} with torch {top['torch']}")
    folder = results / "bench" / f"{device_folder(top['device'])}-{top['date']}"
    folder.mkdir(parents=True, exist_ok=True)
    summary = (files / "summary.md").read_text()
    if any(path.read_text() == summary for path in folder.glob("summary*.md")):
        raise CommitError(f"{files / 'summary.md'} is already committed in {folder}")
    call = next_call(folder, "summary.md")
    for name in CHECK_FILES:
        if not (files / name).exists():
            continue
        if name.startswith("bench_") and (folder / name).exists():
            merged = pd.concat([pd.read_csv(folder / name), pd.read_csv(files / name)], ignore_index=True)
            merged.to_csv(folder / name, index=False)
        else:  # copyfile: the files a device call brings back are read-only
            shutil.copyfile(files / name, call_file(folder, name, call))
    return folder


def evaluated_in_train_mode(summary: dict) -> bool:
    """Whether a run's code predates EVAL_MODE_FIX (its test accuracy is BatchNorm's training mode);
    a run that failed before it trained records no commit and evaluated nothing."""
    commit = summary.get("git_commit")
    if not commit:
        return False
    answer = subprocess.run(["git", "merge-base", "--is-ancestor", EVAL_MODE_FIX, commit], cwd=ROOT, capture_output=True)
    if answer.returncode not in (0, 1):
        raise CommitError(f"git does not know the commit {commit} of the run with seed {summary.get('seed')}, "
                          f"so whether it evaluated in BatchNorm's training mode is unknown")
    return answer.returncode == 1


def commit_campaign(files: Path, results: Path) -> tuple[Path, list[str], list[str], list[str]]:
    """Files gpu_campaign.sh's runs in `results`/<name>/runs/ (<name>: its sweep folder, e.g.
    cifar10_short_15ep), with its summary.md and log.txt beside them as campaign_summary.md and
    campaign_log.txt. Returns the runs folder and the names of the run folders added, removed
    and left out.

    A run folder already there is removed when the campaign brings one of the same name, and when
    its code evaluated in BatchNorm's training mode; the others stay, so that the runs of several
    campaigns join. A run the time box cut is left out: it continues from checkpoints.tar.gz."""
    header(files / "summary.md")
    if not (files / "runs.tar.gz").exists():
        raise CommitError(f"{files} has no runs.tar.gz: the campaign's log.txt says where it stopped")
    with tempfile.TemporaryDirectory() as scratch:
        with tarfile.open(files / "runs.tar.gz") as archive:
            archive.extractall(scratch, filter="data")
        (sweep,) = Path(scratch, "multirun").iterdir()
        runs = results / sweep.name / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        new, unfinished = {}, []
        for summary_file in sorted(sweep.glob("*/summary.json")):
            if json.loads(summary_file.read_text())["status"] in ("running", "interrupted"):
                unfinished.append(summary_file.parent.name)
            else:
                new[summary_file.parent.name] = summary_file.parent
        removed = [old.parent.name for old in sorted(runs.glob("*/summary.json"))
                   if old.parent.name in new or evaluated_in_train_mode(json.loads(old.read_text()))]
        for name in removed:
            shutil.rmtree(runs / name)
        for name, folder in new.items():
            shutil.copytree(folder, runs / name)
        if (sweep / "multirun.yaml").exists():
            shutil.copyfile(sweep / "multirun.yaml", runs / "multirun.yaml")
    if not {path.parent.name for path in runs.glob("*/summary.json")} - new.keys():
        for old in [*runs.parent.glob("campaign_summary*.md"), *runs.parent.glob("campaign_log*.txt")]:
            old.unlink()  # the record of earlier campaigns whose runs are all gone
    call = next_call(runs.parent, "campaign_summary.md")
    for name, target in (("summary.md", "campaign_summary.md"), ("log.txt", "campaign_log.txt")):
        shutil.copyfile(files / name, call_file(runs.parent, target, call))
    return runs, sorted(new), [name for name in removed if name not in new], unfinished


def rebuild() -> None:
    """The reports under results/ and the README's results, as scripts/paper_figures.py rebuilds them."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_figures.py")], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="check the training run under RUNS, copy its records into OUT")
    train.add_argument("runs", type=Path)
    train.add_argument("out", type=Path)
    commands.add_parser("tables", help="Markdown tables of OUT's results").add_argument("out", type=Path)
    commands.add_parser("unfinished", help="checkpoints of unfinished runs under RUNS").add_argument("runs", type=Path)
    for name, what in (("commit-check", "gpu_check.sh's"), ("commit-campaign", "gpu_campaign.sh's")):
        commands.add_parser(name, help=f"file {what} output FILES under results/, rebuild the reports").add_argument(
            "files", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "train":
            sys.exit(check_training(args.runs, args.out))
        elif args.command == "tables":
            print(tables(args.out))
        elif args.command == "unfinished":
            print("\n".join(str(path) for path in unfinished(args.runs)))
        elif args.command == "commit-check":
            print(f"committed to {commit_check(args.files, ROOT / 'results').relative_to(ROOT)}")
            rebuild()
        else:
            runs, added, removed, left_out = commit_campaign(args.files, ROOT / "results")
            print(f"{runs.relative_to(ROOT)}: {len(added)} runs added or replaced, {len(removed)} removed "
                  f"(evaluated in BatchNorm's training mode): {', '.join(removed) or 'none'}")
            if left_out:
                print(f"left out, cut by the time box: {', '.join(left_out)}; to continue them, copy runs.tar.gz "
                      f"and checkpoints.tar.gz into .device/continue/ (docs/gpu.md)")
            rebuild()
            print(f"now update {runs.parent.relative_to(ROOT)}/README.md: its grid, seeds, code and hardware")
    except CommitError as err:
        sys.exit(f"gpu_report: error: {err}")


if __name__ == "__main__":
    main()
