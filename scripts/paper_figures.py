"""Rebuild every table and figure under results/, and the README's results, from the committed run
folders and benchmark CSVs: `python scripts/paper_figures.py`.

Each `results/<name>/` keeps its run records in `runs/`. For every one, this rebuilds the report
beside them (tables, CSVs, figures, and `caption.md`, which says from the records where the
numbers come from: protocol, seeds, LR grid, hardware and code). The README's block between the
two results markers is then rewritten: each result's figures (PNG), table and caption; the
block between the two GPU throughput markers: every row of results/bench/*/bench_train.csv; and
the block between the two workers-per-GPU markers: their ImageNet rows over one worker's images/s.
"""

import argparse
import os
from pathlib import Path

from sngm_bench.bench import throughput_table, workers_per_gpu
from sngm_bench.report import write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ("<!-- results: rebuilt by scripts/paper_figures.py from results/*/runs; do not edit by hand -->",
           "<!-- end of results -->")
THROUGHPUT = ("<!-- GPU throughput: rebuilt by scripts/paper_figures.py from results/bench/*/bench_train.csv; "
              "do not edit by hand -->", "<!-- end of GPU throughput -->")
WORKERS = ("<!-- workers per GPU: rebuilt by scripts/paper_figures.py from results/bench/*/bench_train.csv; "
           "do not edit by hand -->", "<!-- end of workers per GPU -->")
FIGURES = {"accuracy_vs_batch": "final test accuracy against batch size",
           "learning_curves": "test accuracy and training loss per epoch"}


def readme_block(folder: Path, table: str, caption: str) -> str:
    figures = " ".join(f"![{name}: {text}]({folder}/{name}.png)" for name, text in FIGURES.items())
    return f"**`{folder}`** ([details]({folder}/README.md))\n\n{figures}\n\n{table.strip()}\n\n{caption}\n"


def replace_block(text: str, markers: tuple[str, str], content: str) -> str:
    """`text` with what lies between the two `markers` replaced by `content`."""
    begin, end = markers
    if begin not in text or end not in text:
        raise SystemExit(f"paper_figures.py: error: README.md lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n\n{content}\n{end}{rest.split(end, 1)[1]}"


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    os.chdir(ROOT)  # the run folders in the CSVs are then relative to the repository
    blocks = []
    for folder in sorted(p.parent for p in Path("results").glob("*/runs")):
        table = write_report([folder / "runs"], folder)
        caption = (folder / "caption.md").read_text().strip()
        print(f"## {folder}\n\n{table}\n{caption}\n")
        blocks.append(readme_block(folder, table, caption))
    measured = sorted(Path("results/bench").glob("*/bench_train.csv"))
    throughput, workers = throughput_table(measured), workers_per_gpu(measured)
    print(f"## GPU throughput\n\n{throughput}\n{workers}")
    readme = Path("README.md")
    text = replace_block(readme.read_text(), RESULTS, "\n".join(blocks))
    text = replace_block(text, THROUGHPUT, throughput)
    readme.write_text(replace_block(text, WORKERS, workers))
    print(f"rewrote the results, GPU throughput and workers per GPU blocks of {readme}")


if __name__ == "__main__":
    main()
