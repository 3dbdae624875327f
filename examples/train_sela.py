"""The reference SeLa example: self-labelling on scikit-learn's digits.

A thin script over :mod:`otlabel.sela.experiment` (the same as ``otlabel train``):
trains a small convolutional network by SeLa and by DeepCluster-style k-means
labelling over three seeds, on balanced and imbalanced digits, beside k-means
baselines, and writes ``results.md``, ``results.json`` and plots.

    python examples/train_sela.py --out sela-results
    python examples/train_sela.py --dataset cifar10 --data ~/data/cifar-10-batches-py
"""

import sys

from otlabel.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
