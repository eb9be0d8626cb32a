"""Interpolation curves and barriers between two networks.

    curve = evaluate.interpolation_curve(model.apply, {"params": pa, "model_state": sa},
                                         {"params": pb, "model_state": sb}, dataset,
                                         alphas=25, norm=None)   # None: reset if BN
    entry = evaluate.method_entry(curve)   # results.json methods[name]: alphas, curves, barriers
    metrics_a = evaluate.evaluate(model.apply, {"params": pa, "model_state": sa}, dataset)

Everything takes and returns plain dicts/lists; `apply_fn` is a model (lmc, linen or
NNX), any `apply_fn(params, model_state, x, train) -> (logits, model_state)`, or a
plain `apply_fn(params, x) -> logits` (no model state; `lmc.models.calling`). REPAIR's
layer hooks additionally need `apply_fn` to run Flax Linen modules.

Files: `curves.py` (the jitted evaluator), `normalization.py` (stale / RESET /
REPAIR statistics), `layer_hooks.py` (Flax method interception for REPAIR),
`barriers.py`, `endpoints.py` (validation, interpolation), `batching.py`
(fixed-shape batches), `placement.py` (one device or a data-parallel mesh).
Cost: `benchmarks/curve_eval.py` times a curve against the plain forward passes.
"""

from lmc.evaluate.barriers import METRICS, barriers
from lmc.evaluate.curves import as_apply_fn, evaluate, interpolation_curve
from lmc.evaluate.layer_hooks import default_repair_layers, list_layers
from lmc.evaluate.normalization import NORMS


def method_entry(curve: dict) -> dict:
    """A results.json `methods[name]` entry: alphas, curves and barriers of `curve`."""
    curves = {k: v for k, v in curve.items() if k != "alphas"}
    return {"alphas": list(curve["alphas"]), "curves": curves, **barriers(curve)}


def repair_layers(apply_fn, endpoint: dict, example_x) -> list[str]:
    """The layer keys REPAIR corrects by default for this model (see `layer_hooks`)."""
    apply_fn = as_apply_fn(apply_fn, "evaluate.repair_layers")
    layers = list_layers(apply_fn, endpoint["params"], endpoint.get("model_state") or {}, example_x)
    return default_repair_layers(layers)


__all__ = [
    "METRICS",
    "NORMS",
    "barriers",
    "evaluate",
    "interpolation_curve",
    "method_entry",
    "repair_layers",
]
