"""`pair`: two siblings, aligned by each configured method, curves and barriers for each.

The siblings come from `lmc.spawn` (spawned from step k, or independent inits). A
method that fails is recorded with its error in results.json; the others still run.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from lmc import evaluate, spawn
from lmc.experiments import common

log = logging.getLogger(__name__)


def validate(config) -> None:
    dataset = common.load_data(config)
    common.validate_methods(config, common.model_has_batchnorm(config, dataset))
    spawn.validate(config, dataset, [config.spawn.step])
    spawn.child_seeds(config, 1)


def compare_pair(config, model, dataset, ea: dict, eb: dict, methods=None) -> dict:
    """Curves and barriers between endpoints ea and eb for each method."""
    out = {}
    for method in methods or config.eval.methods:
        base, norm = common.parse_method(method)
        try:
            aligned, info = common.align_endpoint(base, config, model, dataset, ea, eb)
            curve = evaluate.interpolation_curve(
                model.apply, ea, aligned, dataset,
                alphas=int(config.eval.num_alphas),
                norm=common.eval_norm(config, norm),
                batch_size=int(config.eval.batch_size),
                train_subset=int(config.eval.train_subset) or None,
                stats_batches=int(config.eval.bn_reset_batches),
            )  # fmt: skip
            out[method] = {**evaluate.method_entry(curve), **info}
        except Exception as e:  # one broken method must not cost the others
            log.error("method %s failed: %s", method, e)
            out[method] = {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=5),
            }
    return out


def endpoint_metrics(config, model, dataset, endpoints: dict) -> dict:
    return {
        name: evaluate.evaluate(
            model.apply,
            e,
            dataset,
            batch_size=int(config.eval.batch_size),
            train_subset=int(config.eval.train_subset) or None,
        )
        for name, e in endpoints.items()
    }


def run(config, workdir: Path) -> dict:
    dataset = common.load_data(config)
    model = common.load_model(config, dataset)
    states = spawn.make_siblings(config, workdir, model, dataset, num_children=2)
    ea, eb = (spawn.endpoint(s) for s in states)
    common.finite_or_raise(ea, "endpoint a"), common.finite_or_raise(eb, "endpoint b")
    return {
        "endpoints": endpoint_metrics(config, model, dataset, {"a": ea, "b": eb}),
        "methods": compare_pair(config, model, dataset, ea, eb),
    }
