"""Compare two networks: endpoint metrics, and a curve with barriers per alignment method.

The one evaluator (`lmc.evaluate`) does the measuring for images and text alike
(labels of shape (N, T) count per token); language-model data adds perplexity and bits
per byte next to every loss.
"""

from __future__ import annotations

import logging
import traceback

import numpy as np

from lmc import evaluate
from lmc.evaluate import METRICS
from lmc.evaluate.metrics import language_model_metrics
from lmc.experiments.common import methods as methods_lib

log = logging.getLogger(__name__)


def _eval_kwargs(config) -> dict:
    return {
        "batch_size": int(config.eval.batch_size),
        "train_subset": int(config.eval.train_subset) or None,
    }


def endpoint_metrics(config, model, dataset, endpoints: dict) -> dict:
    """{name: {"train_loss", "train_error", "test_loss", "test_error", ...}}."""
    out = {}
    for name, e in endpoints.items():
        metrics = evaluate.evaluate(model.apply, e, dataset, **_eval_kwargs(config))
        out[name] = (
            language_model_metrics(metrics, dataset.bytes_per_token)
            if dataset.kind == "text"
            else metrics
        )
    return out


def compare_pair(config, model, dataset, ea: dict, eb: dict, methods=None) -> dict:
    """results.json `methods`: curve and barriers between ea and each alignment of eb.

    A method that fails is recorded with its error; the other methods still run."""
    out = {}
    for method in methods or config.eval.methods:
        base, norm = methods_lib.parse_method(method)
        try:
            aligned, info = methods_lib.align_endpoint(base, config, model, dataset, ea, eb)
            apply_fn, path = methods_lib.curve_path(base, model)
            curve = evaluate.interpolation_curve(
                apply_fn, ea, aligned, dataset,
                alphas=int(config.eval.num_alphas),
                norm=methods_lib.eval_norm(config, norm),
                stats_batches=int(config.eval.bn_reset_batches),
                path=path,
                **_eval_kwargs(config),
            )  # fmt: skip
            out[method] = {**evaluate.method_entry(curve), **info}
        except Exception as e:  # one broken method must not cost the others
            log.error("method %s failed: %s", method, e)
            out[method] = {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=5),
            }
    return out


def pair_barriers(pairs: list[dict]) -> list[dict]:
    """Per-pair barriers of sweep points (curves dropped to keep results.json small)."""
    return [
        {
            m: {k: e[k] for k in ("barrier", "barrier_vs_mean") if k in e}
            | ({"error": e["error"]} if "error" in e else {})
            for m, e in p.items()
        }
        for p in pairs
    ]


def summarize(pair_entries: list[dict]) -> dict:
    """[{method: entry}] over pairs -> {method: {num_pairs, barrier_mean, barrier_std, ...}}."""
    methods = {}
    for method in pair_entries[0]:
        ok = [p[method] for p in pair_entries if "error" not in p.get(method, {"error": 1})]
        if not ok:
            methods[method] = {"error": pair_entries[0][method].get("error", "failed")}
            continue
        summary = {"num_pairs": len(ok)}
        shape = ("same_shape", "midpoint_params", "endpoint_params")  # the circuit merge's
        summary |= {k: ok[0][k] for k in shape if k in ok[0]}
        for kind in ("barrier", "barrier_vs_mean"):
            values = {m: np.array([e[kind][m] for e in ok]) for m in METRICS}
            summary[f"{kind}_mean"] = {m: float(v.mean()) for m, v in values.items()}
            summary[f"{kind}_std"] = {m: float(v.std()) for m, v in values.items()}
        methods[method] = summary
    return methods
