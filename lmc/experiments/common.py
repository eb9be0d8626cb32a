"""Pieces shared by the experiments: data/model from config, methods, endpoint metrics."""

from __future__ import annotations

import logging
import time

import jax
import numpy as np

from lmc import data as data_lib
from lmc import models
from lmc.errors import UserError

log = logging.getLogger(__name__)

BASE_METHODS = ("naive", "weight_matching", "activation_matching", "ste")
NORM_SUFFIXES = ("", "reset", "repair")


def load_data(config) -> data_lib.Dataset:
    if str(config.data.name).startswith("text:"):
        # Text sources take their options (context, held-out fraction, ...) from config.data.
        from lmc.experiments.lm_common import load_data as load_text

        return load_text(config)
    return data_lib.load(config.data.name, config.data.get("dir") or None)


def load_model(config, dataset) -> models.Model:
    return models.from_config(config.model, dataset.num_classes)


def parse_method(method: str) -> tuple[str, str | None]:
    """'weight_matching+repair' -> ('weight_matching', 'repair')."""
    base, _, norm = method.partition("+")
    if base not in BASE_METHODS or norm not in NORM_SUFFIXES:
        valid = ", ".join(BASE_METHODS)
        raise UserError(
            f"unknown method {method!r} in config.eval.methods; valid: {valid}, each "
            "optionally suffixed +reset or +repair"
        )
    return base, norm or None


def validate_methods(config, has_batchnorm: bool) -> None:
    methods = list(config.eval.methods)
    if not methods:
        raise UserError("config.eval.methods is empty; give at least 'naive'")
    for method in methods:
        base, norm = parse_method(method)
        if norm == "reset" and not has_batchnorm:
            raise UserError(
                f"method {method!r}: +reset recomputes BatchNorm statistics, but model "
                f"{config.model.name!r} with norm={config.model.get('norm')!r} has none; use "
                "+repair (REPAIR) for models without BatchNorm"
            )
    n = config.eval.num_alphas
    if n < 3:
        raise UserError(f"config.eval.num_alphas must be at least 3, got {n}")


def model_has_batchnorm(config, dataset) -> bool:
    model = load_model(config, dataset)
    _, state = jax.eval_shape(lambda: model.init(jax.random.key(0), dataset.train_x[:1]))
    return bool(state)


def eval_norm(config, method_norm: str | None) -> str | None:
    if method_norm:
        return method_norm
    norm = config.eval.get("norm", "auto")
    return None if norm == "auto" else norm


def align_endpoint(base: str, config, model, dataset, ea: dict, eb: dict) -> tuple[dict, dict]:
    """B aligned to A by method `base`; returns (endpoint_b', info for results.json)."""
    if base == "naive":
        return eb, {}
    from lmc import align

    t0 = time.perf_counter()
    spec = align.spec_from_model(model, dataset.train_x[:2])
    key = jax.random.key(int(config.align.seed))
    if base == "weight_matching":
        perms, info = align.weight_matching(spec, ea, eb, key=key, max_iter=config.align.max_iter)
        extra = {"sweeps": int(info["sweeps"])}
    elif base == "activation_matching":
        batches = _align_batches(config, dataset)
        perms, info = align.activation_matching(spec, model, ea, eb, batches)
        extra = {}
    else:
        batches = _align_batches(config, dataset, labels=True)

        def midpoint_loss(tree, batch):
            from lmc.metrics import cross_entropy

            logits, _ = model.apply(tree["params"], tree["model_state"], batch[0], False)
            return cross_entropy(logits, batch[1]).mean()

        steps = int(config.align.ste_steps)
        perms, info = align.ste(
            spec,
            ea,
            eb,
            midpoint_loss,
            (batches[i % len(batches)] for i in range(steps)),
            key=key,
            steps=steps,
            max_iter=config.align.max_iter,
        )
        extra = {"steps": steps, "sweeps": int(info.get("sweeps", 0))}
    aligned = align.apply_permutation(spec, perms, eb)
    extra["align_s"] = round(time.perf_counter() - t0, 3)
    return aligned, extra


def _align_batches(config, dataset, labels: bool = False):
    """Fixed training batches (seed config.align.seed) for data-driven alignment."""
    n = int(config.align.activation_batches)
    bs = min(int(config.batch_size), dataset.num_train)
    out = []
    for step in range(n):
        idx = data_lib.batch_indices(int(config.align.seed) + 10_000, step, bs, dataset.num_train)
        out.append((dataset.train_x[idx], dataset.train_y[idx]) if labels else dataset.train_x[idx])
    return out


def finite_or_raise(tree, what: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not np.isfinite(np.asarray(leaf)).all():
            raise UserError(
                f"{what}: parameter {jax.tree_util.keystr(path)} holds NaN/Inf; "
                "the run diverged, retrain with a lower learning rate"
            )
