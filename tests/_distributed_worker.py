"""Rank processes of tests/test_distributed.py (spawned: importable by name)."""

from __future__ import annotations

import pickle
import traceback
from pathlib import Path

import numpy as np


def run(rank: int, world: int, folder: str, cases: list[dict], backend: str = "gloo") -> None:
    """Solve each case's shard of this rank; pickle the results (or the error)."""
    import torch
    import torch.distributed as dist

    import otlabel
    import otlabel.distributed

    device = "cpu"
    if backend == "nccl":  # one GPU per rank
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(
        backend, init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    outcomes = []
    try:
        for case in cases:
            scores = case["shards"][rank]
            if _of_rank(case.get("torch"), rank) or backend == "nccl":
                scores = torch.as_tensor(scores, device=device)
            epsilon = _of_rank(case["epsilon"], rank)
            kwargs = dict(case.get("kwargs", {}))
            if "sample_weights" in case:
                kwargs["sample_weights"] = case["sample_weights"][rank]
            for name, shards in case.get("per_rank", {}).items():  # e.g. known_labels
                kwargs[name] = shards[rank]
            try:
                if case.get("soft"):
                    codes = otlabel.soft_assign(scores, epsilon, group=dist.group.WORLD, **kwargs)
                    outcomes.append({"codes": np.asarray(codes)})
                    continue
                result = otlabel.distributed.assign(scores, epsilon, **kwargs)
                outcomes.append({"result": _host(result)})
            except (ValueError, TypeError) as error:
                outcomes.append({"error": (type(error).__name__, str(error))})
    except Exception:
        outcomes.append({"crash": traceback.format_exc()})
    finally:
        dist.destroy_process_group()
        Path(folder, f"rank{rank}.pkl").write_bytes(pickle.dumps(outcomes))


def _of_rank(value, rank: int):
    """A case's setting: one for all ranks, or a list with one per rank."""
    return value[rank] if isinstance(value, list) else value


def _host(result):
    fields = {}
    for name in ("labels", "counts", "potential", "row_potential"):
        value = getattr(result, name)
        fields[name] = (
            None if value is None else np.asarray(value.cpu() if hasattr(value, "cpu") else value)
        )
        fields[name + "_type"] = type(value).__module__.split(".")[0]
    for name in (
        "n_iter",
        "error",
        "converged",
        "cost",
        "gap",
        "method",
        "backend",
        "unassigned_potential",
    ):
        fields[name] = getattr(result, name)
    return fields
