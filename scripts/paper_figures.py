"""Regenerate every table and figure our committed results cover: `python scripts/paper_figures.py`.

Each `results/<name>/` keeps its run records in `runs/` and its report (tables, CSVs, figures)
beside them; this rebuilds the report in place with the options its README states.
"""

import os
from pathlib import Path

from sngm_bench.report import write_report

ROOT = Path(__file__).resolve().parents[1]
# results/<name> -> the report options its README states.
REPORTS = {"cifar10_reduced": {"target_acc": 0.35}}

os.chdir(ROOT)  # the run folders in the CSVs are then relative to the repository
for name, options in REPORTS.items():
    folder = Path("results") / name
    print(f"## {folder}\n\n{write_report([folder / 'runs'], folder, **options)}")
