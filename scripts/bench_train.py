"""Training throughput on this device: `python scripts/bench_train.py [--steps N] [overrides...]`.

Overrides are the `sngm-bench` ones, e.g. `model=resnet56 batch_size=4096 precision=bf16
channels_last=true compile=true`. Prints images/s and the data pipeline's share of step time.
"""

import argparse

from sngm_bench.bench import bench_train
from sngm_bench.config import compose_config

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=20, help="timed steps (after 5 warm-up steps)")
parser.add_argument("overrides", nargs="*", help="sngm-bench config overrides")
args = parser.parse_args()
result = bench_train(compose_config(args.overrides), steps=args.steps)
for key, value in result.items():
    print(f"{key:>18}: {value:.4g}" if isinstance(value, float) else f"{key:>18}: {value}")
