"""Training throughput on this device: `python scripts/bench_train.py [options] [overrides...]`.

Overrides are the `sngm-bench` ones, e.g. `model=resnet56 batch_size=4096 precision=bf16
channels_last=true compile=true`. Prints images/s, the step-time split (data / optimizer / the
rest; the data share both timed alone, an upper bound, and as the time it adds to the step),
peak memory, FLOPs and model FLOP utilization; `--compare-reference` adds a
hand-written loop on the same model and flags, and the product's throughput as a fraction of it.
`--batch-sizes 512 4096 8192` times each batch size in turn in this one process (so torch.compile
and CUDA start once), appending each result to `--csv` as soon as it is measured.
"""

import argparse
import sys
from pathlib import Path

from sngm_bench.bench import append_row, bench_train
from sngm_bench.cli import check_overrides
from sngm_bench.config import check_values, compose_config
from sngm_bench.errors import UserError

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=50, help="timed steps (median)")
parser.add_argument("--warmup", type=int, default=10, help="untimed steps first, which also absorb torch.compile")
parser.add_argument("--batch-sizes", type=int, nargs="+", help="time each of these batch sizes (overrides batch_size)")
parser.add_argument("--compare-reference", action="store_true", help="also time a hand-written reference loop")
parser.add_argument("--csv", type=Path, help="append each result as a row to this CSV file")
parser.add_argument("overrides", nargs="*", help="sngm-bench config overrides")
args = parser.parse_args()
try:
    check_overrides(args.overrides, multirun=False)  # a bad key or value: one line, as sngm-bench says it
    for batch_size in args.batch_sizes or [None]:
        cfg = compose_config(args.overrides + ([f"batch_size={batch_size}"] if batch_size else []))
        check_values(cfg)
        result = bench_train(cfg, steps=args.steps, warmup=args.warmup, compare_reference=args.compare_reference)
        for key, value in result.items():
            print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
        if args.csv:
            append_row(args.csv, result)
except UserError as err:
    sys.exit(f"bench_train: error: {err}")
