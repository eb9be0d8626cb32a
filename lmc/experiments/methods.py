"""Alignment methods of `config.eval.methods`, for any model: parse, validate, align.

A method is a base with an optional normalization suffix (`+reset`: recompute
BatchNorm statistics, `+repair`: REPAIR). Permutation specs are always traced from the
model (`align.spec_from_model`), whatever the model family. Bases:

- `naive`: no alignment.
- `weight_matching`: Git Re-Basin's weight matching over the traced permutations.
- `activation_matching`: correlation of activations on training batches.
- `ste`: straight-through estimator on the midpoint loss (Git Re-Basin).
- `weight_matching_heads`: weight matching over the richer class with nested units
  (`nested=True`: attention heads permuted as units, each head with its own query/key
  and value/output permutations), started from plain weight matching with
  `WM_RESTARTS` visiting orders. Needs a model with nested units (attention).
- `weight_matching_orthogonal`: `weight_matching_heads`, then rounds of the
  orthogonal residual-stream map (Procrustes, after folding the norms' gains into
  their readers; `lmc.align.orthogonal`) alternated with weight matching. Needs a
  pre-norm model whose residual stream is rotation-symmetric (checked numerically).
- `learned_matching`: the straight-through estimator over the nested class, started
  from `weight_matching_heads`, on the path loss at interpolation weights drawn
  uniformly from `LEARNED_ALPHAS` (Theus et al. 2025's learned matching, with
  permutations where they also learn orthogonal maps).
"""

from __future__ import annotations

import time

import jax
import optax

from lmc.errors import UserError

BASE_METHODS = ("naive", "weight_matching", "activation_matching", "ste",
                "weight_matching_heads", "weight_matching_orthogonal",
                "learned_matching")  # fmt: skip
# Plain weight matching's visiting orders tried before the nested refinement: its
# objective has many local optima on attention layers.
WM_RESTARTS = 4
# The interpolation weights the learned matching's path loss is drawn from ("around
# 0.5": the barrier's maximum sits near the midpoint, and one point alone can be
# fitted without lowering its neighbours).
LEARNED_ALPHAS = (0.3, 0.7)
# Adam's step for the proxy weights. Git Re-Basin's 1e-3 moves each weight of these
# LMs (init std 0.02) by about its own size in tens of steps: measured on lm_rebasin,
# the path loss rose from 2.26 to 3.3 within 5 steps at 1e-3.
LEARNED_LR = 1e-4
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

    t0 = time.perf_counter()
    spec = align.spec_from_model(model, dataset.train_x[:2])
    key = jax.random.key(int(config.align.seed))
    if base == "weight_matching":
        perms, info = align.weight_matching(spec, ea, eb, key=key, max_iter=config.align.max_iter)
        extra = {"sweeps": int(info["sweeps"])}
    elif base == "weight_matching_orthogonal":
        return orthogonal_matching(config, model, dataset, spec, ea, eb, key, t0)
    elif base in ("weight_matching_heads", "learned_matching"):
        spec, perms, extra = heads_matching(config, model, dataset, spec, ea, eb, key)
        if base == "learned_matching":
            start = perms
            perms, info = learned(config, model, dataset, spec, ea, eb, key, perms)
            # Keep the learned permutations only if they lower the path loss on the
            # training batches they were learned on (no held-out data is used).
            losses = [path_loss(config, model, dataset, spec, ea, eb, p) for p in (start, perms)]
            if losses[1] > losses[0]:
                perms = start
            extra = {"steps": int(info["steps"]), "sweeps": int(info["sweeps"]),
                     "path_loss_start": losses[0], "path_loss_learned": losses[1]}  # fmt: skip
    elif base == "activation_matching":
        batches = [x for x, _ in align_batches(config, dataset)]
        perms, info = align.activation_matching(spec, model, ea, eb, batches)
        extra = {}
    else:
        perms, info = straight_through(config, model, dataset, spec, ea, eb, key)
        extra = {"steps": int(config.align.ste_steps), "sweeps": int(info.get("sweeps", 0))}
    aligned = align.apply_permutation(spec, perms, eb)
    extra["align_s"] = round(time.perf_counter() - t0, 3)
    return aligned, extra


def heads_matching(config, model, dataset, plain_spec, ea, eb, key):
    """Weight matching over the nested class, from the best of `WM_RESTARTS` plain runs.

    Returns (nested spec, perms, info for results.json)."""
    from lmc import align
    from lmc.align import nested

    spec = align.spec_from_model(model, dataset.train_x[:2], nested=True)
    if not align.nested_units(spec):
        raise UserError(
            f"methods weight_matching_heads/learned_matching need nested units (attention "
            f"heads); model {config.model.name!r} has none: every permutation of its traced "
            "spec is plain. Use weight_matching."
        )
    max_iter = int(config.align.max_iter)
    perms, info = align.weight_matching(
        plain_spec, ea, eb, key=key, max_iter=max_iter, restarts=WM_RESTARTS
    )
    init = nested.lift(plain_spec, spec, perms)
    perms, nested_info = align.weight_matching(spec, ea, eb, key=key, max_iter=max_iter, init=init)
    return (
        spec,
        perms,
        {
            "sweeps": int(info["sweeps"]) + int(nested_info["sweeps"]),
            "restart_objectives": info.get("restart_objectives", []),
            "objective_plain": float(info["objective"][-1]),
            "objective_heads": float(nested_info["objective"][-1]),
        },
    )


def orthogonal_matching(config, model, dataset, plain_spec, ea, eb, key, t0):
    """`weight_matching_orthogonal`: returns (aligned endpoint b, info)."""
    from lmc.align import orthogonal

    spec, perms, extra = heads_matching(config, model, dataset, plain_spec, ea, eb, key)
    x = dataset.train_x[:2]
    state = ea["model_state"]

    def fn(params, x):
        return model.apply(params, state, x, False)[0]

    pspec = spec.subtree("params") if spec.is_combined() else spec
    roles = orthogonal.roles(fn, plain_spec.subtree("params"), ea["params"], x)
    orthogonal.check_rotation(fn, roles, ea["params"], x)
    params_b, info = orthogonal.weight_matching_orthogonal(
        pspec, roles, ea["params"], eb["params"], key=key, init=perms.copy()
    )
    extra["objective_orthogonal"] = [float(v) for v in info["objective"]]
    extra["align_s"] = round(time.perf_counter() - t0, 3)
    return {"params": params_b, "model_state": eb["model_state"]}, extra


def path_loss(config, model, dataset, spec, ea, eb, perms) -> float:
    """Mean training loss at alpha in LEARNED_ALPHAS and 0.5 on the alignment batches."""
    from lmc import align
    from lmc.evaluate.metrics import cross_entropy

    b = align.apply_permutation(spec, perms, eb)
    total, count = 0.0, 0
    for alpha in (LEARNED_ALPHAS[0], 0.5, LEARNED_ALPHAS[1]):
        mid = jax.tree.map(lambda x, y: (1 - alpha) * x + alpha * y, ea, b)  # noqa: B023
        for x, y in align_batches(config, dataset):
            logits, _ = model.apply(mid["params"], mid["model_state"], x, False)
            total += float(cross_entropy(logits, y).mean())
            count += 1
    return total / count


def learned(config, model, dataset, spec, ea, eb, key, init):
    """The straight-through estimator over `spec` on the path loss (see the docstring)."""
    return straight_through(config, model, dataset, spec, ea, eb, key, alpha=LEARNED_ALPHAS,
                            init=init, optimizer=optax.adam(LEARNED_LR))  # fmt: skip


def straight_through(config, model, dataset, spec, ea, eb, key, **options):
    """`align.ste` on the training loss of interpolated networks over the fixed
    alignment batches, `config.align.ste_steps` steps (Git Re-Basin's STE; `options`
    give learned matching's alphas, start and optimizer)."""
    from lmc import align
    from lmc.evaluate.metrics import cross_entropy

    batches = align_batches(config, dataset)

    def loss(tree, batch):
        logits, _ = model.apply(tree["params"], tree["model_state"], batch[0], False)
        return cross_entropy(logits, batch[1]).mean()

    steps = int(config.align.ste_steps)
    return align.ste(
        spec, ea, eb, loss, (batches[i % len(batches)] for i in range(steps)), key=key,
        steps=steps, max_iter=int(config.align.max_iter), **options,
    )  # fmt: skip


def align_batches(config, dataset) -> list[tuple]:
    """Fixed training batches (seed config.align.seed) for data-driven alignment: the
    same rows for every method and pair, images or text windows alike."""
    n = int(config.align.activation_batches)
    size = min(int(config.batch_size), dataset.num_train)
    seed = int(config.align.seed) + 10_000  # not any child's data seed
    return [dataset.train_batch(seed, step, size) for step in range(n)]
