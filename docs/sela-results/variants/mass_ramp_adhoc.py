"""Ad-hoc variant (not an option of otlabel train): relaxed sizes with partial mass
growing over training, as P2OT's progressive partial transport.

The labels of every update assign the mass MASS_START at the first epoch, growing
linearly to 1 at the last (the samples left out get label -1 and take no part in the
loss); tau is constant.  The final clustering assigns every sample (mass 1).
Records one JSON line per run.  Usage (seeds 0-2 only; measured 2026-12-02):

    python mass_ramp_adhoc.py 0.5 1.0 light,heavy 0,1,2 >> mass-ramp-seeds-0-2.jsonl
"""

import json
import sys
import time

import numpy as np

from otlabel.sela import train as train_module
from otlabel.sela.train import TrainConfig, load_data, train

mass_start, tau = float(sys.argv[1]), float(sys.argv[2])
imbalances, seeds = sys.argv[3].split(","), [int(s) for s in sys.argv[4].split(",")]
train_epoch = train_module._train_epoch


def growing_mass_epoch(config, data, model, optimiser, labeler, schedule, epoch, known):
    progress = epoch / max(config.epochs - 1, 1)
    mass = mass_start + (1.0 - mass_start) * progress
    if mass < 1.0:
        labeler.assign_options["mass"] = mass
    else:
        labeler.assign_options.pop("mass", None)
        labeler.potentials = [
            p[:k] for p, k in zip(labeler.potentials, labeler.n_clusters, strict=True)
        ]
    return train_epoch(config, data, model, optimiser, labeler, schedule, epoch, known)


train_module._train_epoch = growing_mass_epoch
for imbalance in imbalances:
    for seed in seeds:
        started = time.time()
        data = load_data("digits", imbalance, seed=seed)
        config = TrainConfig(seed=seed, imbalance=imbalance, size_penalty=tau)
        final = train(config, data).final
        record = {
            "imbalance": imbalance,
            "seed": seed,
            "mass_start": mass_start,
            "tau": tau,
            "nmi": final["nmi"],
            "acc": final["accuracy"],
            "knn": final["knn"],
            "sizes": sorted(final["sizes"]),
            "true": sorted(np.bincount(data.targets).tolist()),
            "s": time.time() - started,
        }
        print(json.dumps(record), flush=True)
