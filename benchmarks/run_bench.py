"""Thin script over ``otlabel bench`` (the runner lives in ``otlabel.bench``).

python benchmarks/run_bench.py                  # default sizes
python benchmarks/run_bench.py --imagenet       # adds 1 281 167 x 3 000
python benchmarks/run_bench.py --tiny           # proves it runs
"""

import sys

from otlabel.bench import main

if __name__ == "__main__":
    sys.exit(main())
