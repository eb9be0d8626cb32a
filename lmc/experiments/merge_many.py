"""`merge_many`: N models merged into one (Git Re-Basin's MergeMany), for any model family.

The models are trained siblings, or given checkpoints (`config.checkpoints`). Each
model is permuted towards the running mean of the others (weight matching over
the traced spec) and the aligned models are averaged. Reported: each model's metrics,
the plain average of the unaligned weights (the naive merge) and the MergeMany merge.
BatchNorm models' merged networks get recomputed statistics (RESET) before evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from lmc import evaluate, training
from lmc.errors import UserError
from lmc.evaluate.metrics import language_model_metrics
from lmc.experiments.common import setup, tables
from lmc.runtime import io


def num_models(config) -> int:
    """config.merge.num_models, or the number of given checkpoints (config.checkpoints)."""
    if setup.checkpoint_dirs(config):
        return len(setup.checkpoint_dirs(config))
    n = int(config.merge.num_models)
    if n < 2:
        raise UserError(f"config.merge.num_models must be >= 2, got {n}")
    training.check_num_children(config, n, f"config.merge.num_models={n}")
    return n


def validate(config) -> None:
    num_models(config)
    dataset = setup.load_data(config)
    setup.load_model(config, dataset)
    training.validate_spawn(config, dataset, [config.spawn.step])


def _metrics(config, model, dataset, endpoint: dict) -> dict:
    kwargs = dict(
        batch_size=int(config.eval.batch_size), train_subset=int(config.eval.train_subset) or None
    )
    if not endpoint["model_state"]:
        metrics = evaluate.evaluate(model.apply, endpoint, dataset, **kwargs)
    else:
        # A merged BN network needs its own statistics. The evaluator's RESET recomputes
        # them for interior points of a curve: the midpoint of a curve from the merged
        # network to itself is exactly the merged network with reset statistics.
        curve = evaluate.interpolation_curve(
            model.apply, endpoint, endpoint, dataset, alphas=3, norm="reset",
            stats_batches=int(config.eval.bn_reset_batches), **kwargs,
        )  # fmt: skip
        metrics = {k: v[1] for k, v in curve.items() if k != "alphas"}
    if dataset.kind == "text":
        return language_model_metrics(metrics, dataset.bytes_per_token)
    return metrics


def parent_steps(config) -> list[int]:
    """The parent checkpoints this run spawns from (a sweep may train them once)."""
    return [int(config.spawn.step)] if training.is_spawned(config) else []


def run(config, workdir: Path, parent: Path | None = None) -> dict:
    from lmc import align

    dataset = setup.load_data(config)
    model = setup.load_model(config, dataset)
    ends = setup.endpoints(config, workdir, model, dataset, range(num_models(config)),
                           shared=parent)  # fmt: skip
    for i, e in enumerate(ends):
        setup.finite_or_raise(e, f"model {i}")
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


def plot(results: dict, workdir: Path) -> list[Path]:
    from lmc import plots

    return [plots.plot_merge(results, io.path(workdir) / "merge.png")]


def table(runs: list[tuple[str, dict]]) -> str:
    """Metrics (not barriers) of each model, the naive average and the merge."""
    header = ["run", "network", *tables.COLUMNS]
    rows = []
    for run, results in runs:
        named = [(f"model {i}", m) for i, m in enumerate(results["models"])]
        named += [("naive average", results["naive_average"]), ("MergeMany", results["merged"])]
        rows += [[run, name, *(tables.value(c, m[c]) for c in tables.COLUMNS)] for name, m in named]
    return tables.markdown(header, rows)
