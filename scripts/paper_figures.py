"""Rebuild every table and figure under results/, and the README's results, from the committed run
folders: `python scripts/paper_figures.py`.

Each `results/<name>/` keeps its run records in `runs/`. For every one, this rebuilds the report
beside them (tables, CSVs, figures, and `caption.md`, which says from the records where the
numbers come from: protocol, seeds, LR grid, hardware and code). The README's block between the
two results markers is then rewritten: each result's figures (PNG), table and caption.
"""

import os
from pathlib import Path

from sngm_bench.report import write_report

ROOT = Path(__file__).resolve().parents[1]
# results/<name> -> report options other than the defaults (its README states them).
OPTIONS = {"cifar10_reduced": {"target_acc": 0.35}}
BEGIN = "<!-- results: rebuilt by scripts/paper_figures.py from results/*/runs; do not edit by hand -->"
END = "<!-- end of results -->"
FIGURES = {"accuracy_vs_batch": "final test accuracy against batch size",
           "learning_curves": "test accuracy and training loss per epoch"}


def readme_block(folder: Path, table: str, caption: str) -> str:
    figures = " ".join(f"![{name}: {text}]({folder}/{name}.png)" for name, text in FIGURES.items())
    return f"**`{folder}`** ([details]({folder}/README.md))\n\n{figures}\n\n{table.strip()}\n\n{caption}\n"


def main() -> None:
    os.chdir(ROOT)  # the run folders in the CSVs are then relative to the repository
    blocks = []
    for folder in sorted(p.parent for p in Path("results").glob("*/runs")):
        table = write_report([folder / "runs"], folder, **OPTIONS.get(folder.name, {}))
        caption = (folder / "caption.md").read_text().strip()
        print(f"## {folder}\n\n{table}\n{caption}\n")
        blocks.append(readme_block(folder, table, caption))
    readme = Path("README.md")
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"paper_figures.py: error: README.md lacks the results markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    readme.write_text(f"{head}{BEGIN}\n\n" + "\n".join(blocks) + f"\n{END}{rest.split(END, 1)[1]}")
    print(f"rewrote the results block of {readme}")


if __name__ == "__main__":
    main()
