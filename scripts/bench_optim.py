"""Optimizer step time relative to SGD-momentum: `python scripts/bench_optim.py [--steps N] ...`.

Times one step() of MSGD, SNGM, LARS and LAMB (as their configs build them) and of
torch.optim.SGD(momentum=0.9, foreach=True) (and fused=True on CUDA) on the ResNet-50 and
ResNet-20 parameter sets; prints the device, the torch version, and each median and ratio.
`--compile` adds SNGM, LARS and LAMB with their step compiled by torch.compile.
"""

import argparse

import torch

from sngm_bench.optim.benchmark import PARAMETER_SETS, bench_optimizers, format_table, write_csv

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--sets", nargs="+", choices=list(PARAMETER_SETS), default=list(PARAMETER_SETS),
                    help="parameter sets (default: all)")
parser.add_argument("--steps", type=int, default=50, help="timed steps per optimizer (median; default 50)")
parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
parser.add_argument("--weight-decay", type=float, default=0.0,
                    help="for every optimizer and the baselines (default 0, as in the plain SGD baseline)")
parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
parser.add_argument("--threads", type=int,
                    help="CPU threads (default: torch's); 1 gives steady numbers on a shared machine")
parser.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                    help="also time our optimizers' steps compiled by torch.compile (default backend: inductor)")
parser.add_argument("--csv", help="also write the rows to this CSV file")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

rows = bench_optimizers(args.sets, args.steps, args.warmup, args.weight_decay, args.device, args.compile)
if args.csv:  # first: the measurements are kept whatever printing them meets
    write_csv(rows, args.csv)
print(format_table(rows))
