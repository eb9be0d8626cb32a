"""Alignment methods of `config.eval.methods`, for any model: parse, validate, align.

A method is a base (`naive`, `weight_matching`, `activation_matching`, `ste`) with an
optional normalization suffix (`+reset`: recompute BatchNorm statistics, `+repair`:
REPAIR). Permutation specs are always traced from the model (`align.spec_from_model`),
whatever the model family.
"""

from __future__ import annotations

import time

import jax

from lmc.errors import UserError

BASE_METHODS = ("naive", "weight_matching", "activation_matching", "ste")
NORM_SUFFIXES = ("", "reset", "repair")
TUPLE_SYNTAX = "--config.eval.methods=\"('naive','weight_matching')\""


def parse_method(method: str) -> tuple[str, str | None]:
    """'weight_matching+repair' -> ('weight_matching', 'repair')."""
    base, _, norm = str(method).partition("+")
    if base not in BASE_METHODS or norm not in NORM_SUFFIXES:
        hint = ""
        if "," in str(method):
            hint = f" (several methods are a tuple: {TUPLE_SYNTAX})"
        raise UserError(
            f"unknown method {method!r} in config.eval.methods{hint}; valid: "
            f"{', '.join(BASE_METHODS)}, each optionally suffixed +reset or +repair"
        )
    return base, norm or None


def validate_methods(config, has_batchnorm: bool) -> None:
    methods = config.eval.methods
    if isinstance(methods, str):
        raise UserError(
            f"config.eval.methods must be a tuple of method names, got the string {methods!r}; "
            f"write {TUPLE_SYNTAX}"
        )
    if not methods:
        raise UserError(f"config.eval.methods is empty; give at least 'naive', e.g. {TUPLE_SYNTAX}")
    for method in methods:
        _, norm = parse_method(method)
        if norm == "reset" and not has_batchnorm:
            raise UserError(
                f"method {method!r} in config.eval.methods: +reset recomputes BatchNorm "
                f"statistics, but model {config.model.name!r} with config.model.norm="
                f"{config.model.norm!r} has none; use +repair (REPAIR) for models without "
                "BatchNorm"
            )
    n = config.eval.num_alphas
    if n < 3:
        raise UserError(f"config.eval.num_alphas must be at least 3, got {n}")


def eval_norm(config, method_norm: str | None) -> str | None:
    """The normalization a method's curve uses: its suffix, else `config.eval.norm`."""
    if method_norm:
        return method_norm
    return None if config.eval.norm == "auto" else config.eval.norm


def align_endpoint(base: str, config, model, dataset, ea: dict, eb: dict) -> tuple[dict, dict]:
    """B aligned to A by method `base`; returns (endpoint b', info for results.json)."""
    if base == "naive":
        return eb, {}
    from lmc import align
    from lmc.evaluate.metrics import cross_entropy

    t0 = time.perf_counter()
    spec = align.spec_from_model(model, dataset.train_x[:2])
    key = jax.random.key(int(config.align.seed))
    if base == "weight_matching":
        perms, info = align.weight_matching(spec, ea, eb, key=key, max_iter=config.align.max_iter)
        extra = {"sweeps": int(info["sweeps"])}
    elif base == "activation_matching":
        batches = [x for x, _ in align_batches(config, dataset)]
        perms, info = align.activation_matching(spec, model, ea, eb, batches)
        extra = {}
    else:
        batches = align_batches(config, dataset)

        def midpoint_loss(tree, batch):
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


def align_batches(config, dataset) -> list[tuple]:
    """Fixed training batches (seed config.align.seed) for data-driven alignment: the
    same rows for every method and pair, images or text windows alike."""
    n = int(config.align.activation_batches)
    size = min(int(config.batch_size), dataset.num_train)
    seed = int(config.align.seed) + 10_000  # not any child's data seed
    return [dataset.train_batch(seed, step, size) for step in range(n)]
