"""Ad-hoc variants (not options of otlabel train): relaxed sizes with tau, or the
assigned mass, changing over training.

``tau START END``: tau falls geometrically from START to END over the epochs (a
constant tau is START = END); the final clustering uses END.
``mass START TAU``: tau constant; each label update assigns a mass growing linearly
from START at the first epoch to 1 at the last (as P2OT's progressive partial
transport; the samples left out get label -1 and take no part in the loss); the final
clustering assigns every sample.  The schedule is set on the labeler before each
epoch.  Prints one JSON line per run.  Measured 2026-12-02, seeds 0-2 only:

    python schedules_adhoc.py tau 3 0.3 light,heavy 0,1,2 >> tau-anneal-seeds-0-2.jsonl
    python schedules_adhoc.py tau 1 0.3 light,heavy 0,1,2 >> tau-anneal-seeds-0-2.jsonl
    python schedules_adhoc.py tau 0.6 0.6 light,heavy 0,1,2 >> tau-anneal-seeds-0-2.jsonl
    python schedules_adhoc.py tau 1.5 1.5 light,heavy 0,1,2 >> tau-anneal-seeds-0-2.jsonl
    python schedules_adhoc.py mass 0.5 1.0 light,heavy 0,1,2 >> mass-ramp-seeds-0-2.jsonl
"""

import json
import sys
import time

import numpy as np

from otlabel.sela import train as train_module
from otlabel.sela.train import TrainConfig, load_data, train

kind, first, second = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
imbalances, seeds = sys.argv[4].split(","), [int(s) for s in sys.argv[5].split(",")]
final_tau = second  # tau: its end value; mass: the constant tau
train_epoch = train_module._train_epoch


def scheduled_epoch(config, data, model, optimiser, labeler, schedule, epoch, known):
    progress = epoch / max(config.epochs - 1, 1)
    options = labeler.assign_options
    if kind == "tau":
        options["size_penalty"] = first * (second / first) ** progress
    elif first + (1.0 - first) * progress < 1.0:
        options["mass"] = first + (1.0 - first) * progress
    elif "mass" in options:  # every sample assigned: the virtual column's g0 goes
        del options["mass"]
        labeler.potentials = [
            p[:k] for p, k in zip(labeler.potentials, labeler.n_clusters, strict=True)
        ]
    return train_epoch(config, data, model, optimiser, labeler, schedule, epoch, known)


train_module._train_epoch = scheduled_epoch
for imbalance in imbalances:
    for seed in seeds:
        started = time.time()
        data = load_data("digits", imbalance, seed=seed)
        config = TrainConfig(seed=seed, imbalance=imbalance, size_penalty=final_tau)
        final = train(config, data).final
        schedule = {"tau_start": first, "tau_end": second}
        if kind == "mass":
            schedule = {"mass_start": first, "tau": second}
        record = {
            "imbalance": imbalance,
            "seed": seed,
            **schedule,
            "nmi": final["nmi"],
            "acc": final["accuracy"],
            "knn": final["knn"],
            "sizes": sorted(final["sizes"]),
            "true": sorted(np.bincount(data.targets).tolist()),
            "s": time.time() - started,
        }
        print(json.dumps(record), flush=True)
