"""Ad-hoc variant (not an option of otlabel train): relaxed sizes with tau annealed.

tau falls geometrically from TAU_START to TAU_END over the epochs (set on the
labeler before each epoch); the final clustering uses TAU_END.  Records one JSON
line per run.  Usage (seeds 0-2 only; measured 2026-12-02, commit 9403f50):

    python tau_anneal_adhoc.py 3 0.3 light,heavy 0,1,2 >> tau-anneal-seeds-0-2.jsonl
    python tau_anneal_adhoc.py 1 0.3 light,heavy 0,1,2 >> tau-anneal-seeds-0-2.jsonl
    python tau_anneal_adhoc.py 0.6 0.6 light,heavy 0,1,2 >> tau-anneal-seeds-0-2.jsonl
    python tau_anneal_adhoc.py 1.5 1.5 light,heavy 0,1,2 >> tau-anneal-seeds-0-2.jsonl
"""

import json
import sys
import time

import numpy as np

from otlabel.sela import train as train_module
from otlabel.sela.train import TrainConfig, load_data, train

tau_start, tau_end = float(sys.argv[1]), float(sys.argv[2])
imbalances, seeds = sys.argv[3].split(","), [int(s) for s in sys.argv[4].split(",")]
train_epoch = train_module._train_epoch


def annealed_epoch(config, data, model, optimiser, labeler, schedule, epoch, known):
    progress = epoch / max(config.epochs - 1, 1)
    labeler.assign_options["size_penalty"] = tau_start * (tau_end / tau_start) ** progress
    return train_epoch(config, data, model, optimiser, labeler, schedule, epoch, known)


train_module._train_epoch = annealed_epoch
for imbalance in imbalances:
    for seed in seeds:
        started = time.time()
        data = load_data("digits", imbalance, seed=seed)
        config = TrainConfig(seed=seed, imbalance=imbalance, size_penalty=tau_end)
        final = train(config, data).final
        record = {
            "imbalance": imbalance,
            "seed": seed,
            "tau_start": tau_start,
            "tau_end": tau_end,
            "nmi": final["nmi"],
            "acc": final["accuracy"],
            "knn": final["knn"],
            "sizes": sorted(final["sizes"]),
            "true": sorted(np.bincount(data.targets).tolist()),
            "s": time.time() - started,
        }
        print(json.dumps(record), flush=True)
