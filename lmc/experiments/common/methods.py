"""Alignment methods of `config.eval.methods`, for any model: parse, validate, align.

A method is a base with an optional normalization suffix (`+reset`: recompute
BatchNorm statistics, `+repair`: REPAIR). Permutation specs are always traced from the
model (`align.spec_from_model`), whatever the model family. Bases (`METHODS`: a
function and one entry each):

- `naive`: no alignment.
- `weight_matching`: Git Re-Basin's weight matching over the traced permutations.
- `activation_matching`: correlation of activations on training batches.
- `activation_matching_heads`: the same over the richer class with nested units
  (heads matched pair by pair, each head with its own query/key and value/output
  permutations). Needs a model with nested units (attention).
- `ste`: straight-through estimator on the midpoint loss (Git Re-Basin).
- `weight_matching_heads`: weight matching over the richer class with nested units
  (`nested=True`: attention heads permuted as units, each head with its own query/key
  and value/output permutations), started from plain weight matching with
  `WM_RESTARTS` visiting orders. Needs a model with nested units (attention).
- `weight_matching_orthogonal`: `weight_matching_heads`, then rounds of the
  orthogonal residual-stream map (Procrustes, after folding the norms' gains into
  their readers; `lmc.align.continuous.orthogonal`) alternated with weight matching. Needs a
  pre-norm model whose residual stream is rotation-symmetric (checked numerically).
- `learned_matching`: `weight_matching_orthogonal`, then orthogonal maps learned on
  the path loss (Theus et al. 2025's learned matching; `lmc.align.continuous.learned`): the
  residual-stream rotation and one orthogonal map per head for query/key and for
  value/output (every class the traced program shows to be orthogonally symmetric),
  trained by Adam on the training loss at interpolation weights drawn uniformly from
  `LEARNED_ALPHAS`, `config.align.learned_steps` steps; the permutations stay fixed.
- `learned_matching_invertible`: the same with general invertible per-head maps
  (q -> q M, k -> k M^-T; v -> v N, W_o -> N^-1 W_o; `lmc.align.continuous.invertible`).
- `learned_matching_dual`: invertible maps learned on both endpoints toward a shared
  path (Li & Shen 2026); B is returned as T_A^-1 T_B(B), whose line from A is that
  path up to a symmetry.
- `lowrank_control`: the capacity control of the learned methods: as many free
  parameters as `learned_matching_invertible`, same start, batches, steps and path
  loss, spent on a low-rank correction of B that is no symmetry (`lmc.align.continuous.lowrank`).
- `circuit`: B aligned by `config.align.circuit_base`, then the heads interpolated in
  circuit form (Theus et al. 2025; `lmc.align.continuous.circuit`): the products W_Q W_K^T and
  W_V W_O, realised as heads of twice the head dim. Not a same-shape merge: its
  results.json entry says `same_shape: false` with `midpoint_params` and
  `endpoint_params`, and tables list it apart. Needs lmc's transformer, learned
  positions, no +reset/+repair.

The learned methods hold out `config.align.learned_holdout` batches of their stream
for early stopping and report their data budget (`data`: windows read and their
bytes as a multiple of one model's training).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import numpy as np

from lmc.errors import UserError

# Visiting orders of the transformer recipes' weight matching (heads, orthogonal,
# learned): its objective has many local optima on attention layers.
WM_RESTARTS = 4
# The interpolation weights the learned matching's path loss is drawn from: around
# the midpoint, where the barrier sits, so the whole middle of the path is lowered.
LEARNED_ALPHAS = (0.2, 0.8)
NORM_SUFFIXES = ("", "reset", "repair")
TUPLE_SYNTAX = "--config.eval.methods=\"('naive','weight_matching')\""


def parse_method(method: str) -> tuple[str, str | None]:
    """'weight_matching+repair' -> ('weight_matching', 'repair')."""
    base, _, norm = str(method).partition("+")
    if base not in METHODS or norm not in NORM_SUFFIXES:
        hint = ""
        if "," in str(method):
            hint = f" (several methods are a tuple: {TUPLE_SYNTAX})"
        raise UserError(
            f"unknown method {method!r} in config.eval.methods{hint}; valid: "
            f"{', '.join(METHODS)}, each optionally suffixed +reset or +repair"
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
    for base in dict.fromkeys(parse_method(m)[0] for m in methods):
        if METHODS[base].check is not None:
            METHODS[base].check(config)
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
    method = METHODS[base]
    if method.align is None:  # naive: the endpoints as trained, nothing to time
        return eb, {}
    t0 = time.perf_counter()
    aligned, info = method.align(config, model, dataset, ea, eb)
    return aligned, {**info, "align_s": round(time.perf_counter() - t0, 3)}


def curve_path(base: str, model) -> tuple[Callable, Callable | None]:
    """(apply_fn, path) of method `base`'s curve (`lmc.evaluate.interpolation_curve`):
    the model and the straight line, unless the method has a path of its own."""
    path = METHODS[base].path
    return (model.apply, None) if path is None else path(model)


def _key(config) -> jax.Array:
    return jax.random.key(int(config.align.seed))


def _spec(model, dataset, nested: bool = False):
    from lmc import align

    return align.spec_from_model(model, dataset.train_x[:2], nested=nested)


def weight_matching(config, model, dataset, ea, eb):
    from lmc import align

    spec = _spec(model, dataset)
    perms, info = align.weight_matching(
        spec, ea, eb, key=_key(config), max_iter=config.align.max_iter
    )
    return align.apply_permutation(spec, perms, eb), {"sweeps": int(info["sweeps"])}


def heads_matching(config, model, dataset, ea, eb):
    """`weight_matching_heads`."""
    from lmc import align

    aligned, info = align.weight_matching_heads(
        model, ea, eb, dataset.train_x[:2], key=_key(config), max_iter=int(config.align.max_iter),
        restarts=WM_RESTARTS,
    )  # fmt: skip
    return aligned, heads_info(info)


def activation_matching(config, model, dataset, ea, eb, nested: bool = False):
    from lmc import align

    spec = _spec(model, dataset, nested=nested)
    if nested and not align.nested_units(spec):
        raise UserError(
            "activation_matching_heads needs nested units (attention heads): every "
            "permutation of this model's traced spec is plain; use activation_matching"
        )
    batches = [x for x, _ in align_batches(config, dataset)]
    perms, _ = align.activation_matching(spec, model, ea, eb, batches)
    return align.apply_permutation(spec, perms, eb), {}


def activation_heads_matching(config, model, dataset, ea, eb):
    """`activation_matching_heads`."""
    return activation_matching(config, model, dataset, ea, eb, nested=True)


def heads_info(info: dict) -> dict:
    """The results.json entries of `align.weight_matching_heads`' info."""
    keys = ("sweeps", "restart_objectives", "objective_heads")
    return {k: info[k] for k in keys}


def orthogonal_info(info: dict) -> dict:
    """The results.json entries of `align.weight_matching_orthogonal`'s info."""
    keys = ("sweeps", "restart_objectives", "objective_orthogonal")
    return {k: info[k] for k in keys}


def orthogonal_matching(config, model, dataset, ea, eb):
    """`weight_matching_orthogonal`: returns (aligned endpoint b, info for results.json)."""
    from lmc import align

    aligned, info = align.weight_matching_orthogonal(
        model, ea, eb, dataset.train_x[:2], key=_key(config), max_iter=int(config.align.max_iter),
        restarts=WM_RESTARTS,
    )  # fmt: skip
    return aligned, orthogonal_info(info)


def check_learned(config) -> None:
    steps, lr = config.align.learned_steps, config.align.learned_lr
    if int(steps) != steps or steps < 1:
        raise UserError(f"config.align.learned_steps must be a positive integer, got {steps!r}")
    if not lr > 0:
        raise UserError(f"config.align.learned_lr must be positive, got {lr!r}")


def learned(config, model, dataset, ea, eb, control=False, **options):
    """The learned methods (`options`: maps, dual; `control`: `lowrank_control`):
    returns (aligned endpoint b, info with the data budget)."""
    from lmc import align

    size = min(int(config.batch_size), dataset.num_train)
    seed = int(config.align.seed) + 20_000  # not any child's data seed, nor align_batches'
    steps, held = int(config.align.learned_steps), int(config.align.learned_holdout)
    batches = (dataset.train_batch(seed, s, size) for s in range(steps))
    # held-out batches: the same stream, after the training ones
    holdout = [dataset.train_batch(seed, steps + i, size) for i in range(held)]
    run = align.lowrank_control if control else align.learned_matching
    aligned, info = run(
        model, ea, eb, dataset.train_x[:2], batches, key=_key(config), steps=steps,
        learning_rate=float(config.align.learned_lr), alpha=LEARNED_ALPHAS,
        max_iter=int(config.align.max_iter), restarts=WM_RESTARTS, holdout=holdout,
        eval_every=int(config.align.learned_eval_every), **options,
    )  # fmt: skip
    losses = info["losses"]
    tail = max(1, len(losses) // 10)
    keep = ("free_parameters", "dual", "max_condition", "best_step", "holdout_losses", "rank",
            "budget")  # fmt: skip
    return aligned, {
        **orthogonal_info(info), "steps": info["steps"],
        "learned_classes": info.get("classes", []),
        "path_loss_first": losses[0] if losses else None,
        "path_loss_last": float(np.mean(losses[-tail:])) if losses else None,
        **{k: info[k] for k in keep if k in info},
        "data": data_budget(config, dataset, size, steps + held),
    }  # fmt: skip


def data_budget(config, dataset, batch: int, batches: int) -> dict:
    """What a learned method read: windows, bytes, and bytes as a multiple of one
    model's training (num_steps x batch_size windows of the same context)."""
    context = int(dataset.train_x.shape[-1])
    trained = int(config.num_steps) * int(config.batch_size) * context
    read = batches * batch * context
    return {"batches": batches, "batch": batch, "context": context, "tokens": read,
            "of_training": round(read / trained, 4) if trained else None}  # fmt: skip


def straight_through(config, model, dataset, ea, eb):
    """`align.ste` on the training loss of interpolated networks over the fixed
    alignment batches, `config.align.ste_steps` steps (Git Re-Basin's STE)."""
    from lmc import align
    from lmc.evaluate.metrics import cross_entropy

    spec = _spec(model, dataset)
    batches = align_batches(config, dataset)

    def loss(tree, batch):
        logits, _ = model.apply(tree["params"], tree["model_state"], batch[0], False)
        return cross_entropy(logits, batch[1]).mean()

    steps = int(config.align.ste_steps)
    perms, info = align.ste(
        spec, ea, eb, loss, (batches[i % len(batches)] for i in range(steps)), key=_key(config),
        steps=steps, max_iter=int(config.align.max_iter),
    )  # fmt: skip
    aligned = align.apply_permutation(spec, perms, eb)
    return aligned, {"steps": steps, "sweeps": int(info.get("sweeps", 0))}


def align_batches(config, dataset) -> list[tuple]:
    """Fixed training batches (seed config.align.seed) for data-driven alignment: the
    same rows for every method and pair, images or text windows alike."""
    n = int(config.align.activation_batches)
    size = min(int(config.batch_size), dataset.num_train)
    seed = int(config.align.seed) + 10_000  # not any child's data seed
    return [dataset.train_batch(seed, step, size) for step in range(n)]


def circuit(config, model, dataset, ea, eb):
    """`circuit`: B aligned by `config.align.circuit_base`; the circuit form itself is
    the method's `path`. Info: the base's, and the midpoint's size."""
    from lmc.align.continuous import circuit as circuit_lib

    base = str(config.align.circuit_base)
    aligned, info = align_endpoint(base, config, model, dataset, ea, eb)
    counts = circuit_lib.param_counts(ea["params"])
    return aligned, {**info, "circuit_base": base, "same_shape": False, **counts}


def check_circuit(config) -> None:
    base = config.align.circuit_base
    same_shape = [m for m, entry in METHODS.items() if entry.path is None]
    if base not in same_shape:
        raise UserError(
            f"config.align.circuit_base={base!r}: the alignment before the circuit form is "
            f"a same-shape method, one of {', '.join(same_shape)}"
        )
    if METHODS[base].check is not None:
        METHODS[base].check(config)
    if any(str(m).startswith("circuit+") for m in config.eval.methods):
        raise UserError(
            "circuit in config.eval.methods takes no +reset/+repair: they correct "
            "statistics along the straight line, and the circuit path is not one"
        )
    name, positions = config.model.get("name"), config.model.get("positions", "learned")
    if name != "transformer" or positions != "learned":
        raise UserError(
            f"circuit needs config.model.name='transformer' with positions='learned' (got "
            f"{name!r}, {positions!r}): its midpoint is lmc's transformer with wider heads, "
            "and rotary positions would rotate A's and B's query dimensions together"
        )


@dataclasses.dataclass(frozen=True)
class Method:
    """`align(config, model, dataset, ea, eb) -> (b aligned to a, info)`: info goes to
    results.json (align_endpoint adds the time, align_s); None: b as trained.
    `check(config)`: the method's config keys, checked before any training.
    `path(model) -> (apply_fn, path)`: a curve that is not the straight line under
    `model.apply` (`lmc.evaluate.interpolation_curve`'s `path`); None: that line."""

    align: Callable | None
    check: Callable | None = None
    path: Callable | None = None


def _circuit_path(model):
    from lmc.align.continuous import circuit as circuit_lib

    return circuit_lib.circuit_path(model)


# The bases of config.eval.methods; adding a method is its function and one entry.
METHODS = {
    "naive": Method(None),
    "weight_matching": Method(weight_matching),
    "activation_matching": Method(activation_matching),
    "ste": Method(straight_through),
    "weight_matching_heads": Method(heads_matching),
    "weight_matching_orthogonal": Method(orthogonal_matching),
    "learned_matching": Method(learned, check=check_learned),
    "activation_matching_heads": Method(activation_heads_matching),
    "learned_matching_invertible": Method(
        functools.partial(learned, maps="invertible"), check=check_learned
    ),
    "learned_matching_dual": Method(
        functools.partial(learned, maps="invertible", dual=True), check=check_learned
    ),
    "lowrank_control": Method(functools.partial(learned, control=True), check=check_learned),
    "circuit": Method(circuit, check=check_circuit, path=_circuit_path),
}
