"""`python -m sngm_bench` and `torchrun -m sngm_bench` run the same Hydra app as `sngm-bench`."""

from sngm_bench.cli import main

main()
