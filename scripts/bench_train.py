"""Training throughput on this device: `python scripts/bench_train.py [options] [overrides...]`.

Overrides are the `sngm-bench` ones, e.g. `model=resnet56 batch_size=4096 precision=bf16
channels_last=true compile=true`. Prints images/s, the step-time split (data / forward+backward
/ optimizer), peak memory, FLOPs and model FLOP utilization; `--compare-reference` adds a
hand-written loop on the same model and flags, and the product's throughput as a fraction of it.
"""

import argparse
import csv
from pathlib import Path

from sngm_bench.bench import bench_train
from sngm_bench.config import compose_config

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=50, help="timed steps (median), after 10 warm-up steps")
parser.add_argument("--compare-reference", action="store_true", help="also time a hand-written reference loop")
parser.add_argument("--csv", type=Path, help="append the result as a row to this CSV file")
parser.add_argument("overrides", nargs="*", help="sngm-bench config overrides")
args = parser.parse_args()
result = bench_train(compose_config(args.overrides), steps=args.steps, compare_reference=args.compare_reference)
for key, value in result.items():
    print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
if args.csv:
    new = not args.csv.exists()
    with open(args.csv, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result))
        if new:
            writer.writeheader()
        writer.writerow(result)
