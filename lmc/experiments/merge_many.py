"""`merge_many`: N independently trained models merged into one (Git Re-Basin's MergeMany).

Each model is permuted towards the running mean of the others (weight matching) and
the aligned models are averaged. Reported: each model's metrics, the plain average
of the unaligned weights (the naive merge) and the MergeMany merge. For BatchNorm
models the merged networks' statistics are recomputed (RESET) before evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from lmc import evaluate, spawn
from lmc.errors import UserError
from lmc.experiments import common


def validate(config) -> None:
    n = int(config.merge.num_models)
    if n < 2:
        raise UserError(f"config.merge.num_models must be >= 2, got {n}")
    if len(config.spawn.child_seeds) < n:
        raise UserError(
            f"config.merge.num_models={n} needs {n} seeds in config.spawn.child_seeds "
            f"(it has {len(config.spawn.child_seeds)})"
        )
    dataset = common.load_data(config)
    spawn.validate(config, dataset, [config.spawn.step])


def _metrics(config, model, dataset, endpoint: dict) -> dict:
    kwargs = dict(
        batch_size=int(config.eval.batch_size), train_subset=int(config.eval.train_subset) or None
    )
    if not endpoint["model_state"]:
        return evaluate.evaluate(model.apply, endpoint, dataset, **kwargs)
    # A merged BN network needs its own statistics. The evaluator's RESET recomputes
    # them for interior points of a curve: the midpoint of a curve from the merged
    # network to itself is exactly the merged network with reset statistics.
    curve = evaluate.interpolation_curve(
        model.apply,
        endpoint,
        endpoint,
        dataset,
        alphas=3,
        norm="reset",
        stats_batches=int(config.eval.bn_reset_batches),
        **kwargs,
    )
    return {k: v[1] for k, v in curve.items() if k != "alphas"}


def run(config, workdir: Path) -> dict:
    from lmc import align

    dataset = common.load_data(config)
    model = common.load_model(config, dataset)
    n = int(config.merge.num_models)
    k = int(config.spawn.step)
    if config.spawn.mode == "spawn":
        spawn.train_parent(config, workdir, model, dataset, [k])
    ends = [
        spawn.endpoint(
            spawn.train_child(
                config, workdir, model, dataset, i, k if config.spawn.mode == "spawn" else None
            )
        )
        for i in range(n)
    ]
    for i, e in enumerate(ends):
        common.finite_or_raise(e, f"model {i}")
    naive = jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x) for x in xs]), 0), *ends)
    spec = align.spec_from_model(model, dataset.train_x[:2])
    t0 = time.perf_counter()
    merged, _, info = align.merge_many(
        spec, ends, key=jax.random.key(int(config.align.seed)), max_iter=int(config.align.max_iter)
    )
    align_s = time.perf_counter() - t0
    models_metrics = [_metrics(config, model, dataset, e) for e in ends]
    result = {
        "models": models_metrics,
        "naive_average": _metrics(config, model, dataset, naive),
        "merged": _metrics(config, model, dataset, merged),
        "merge_info": {
            "align_s": round(align_s, 3),
            **{k: v for k, v in info.items() if isinstance(v, int | float | str)},
        },
    }
    result["best_model_test_error"] = min(m["test_error"] for m in models_metrics)
    return result
