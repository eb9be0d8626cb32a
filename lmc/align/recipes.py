"""Alignment recipes for transformers: from a model and two trees to B aligned to A.

The methods of `lmc.align` work on a spec and two trees; these recipes chain them the
way the best results on attention models are reached, and are what the experiment
engine (`lmc.experiments.common.methods`) calls:

    from lmc import align
    b_heads, info = align.weight_matching_heads(model, tree_a, tree_b, x)
    b_orth, info = align.weight_matching_orthogonal(model, tree_a, tree_b, x)
    b_learned, info = align.learned_matching(model, tree_a, tree_b, x, batches)

`model` is an `lmc.models` Model or anything `lmc.models.as_model` takes (a linen
module); `tree_a`/`tree_b` are combined trees {"params": ..., "model_state": ...};
`x` is an example input (a batch of token ids for a language model). Both return
B's combined tree aligned to A (the same function as B) and an info dict.

- `weight_matching_heads`: weight matching over the richer class with nested units
  (heads permuted as units, each head with its own query/key and value/output
  permutations), in `restarts` visiting orders (the objective has many local optima
  on attention layers). One descent over the nested spec reaches a higher J than
  plain weight matching lifted to it and refined (trained LM pairs of
  `configs/lm_rebasin.py`, compared in benchmarks/README.md).
- `weight_matching_orthogonal`: rounds of weight matching over the same nested class
  alternated with the orthogonal residual-stream map (Procrustes), on the models
  with their norms' gains folded into the readers (`lmc.align.continuous.orthogonal`).
  Needs a pre-norm model whose residual stream is rotation-symmetric; checked
  numerically, a UserError otherwise.
- `learned_matching`: `weight_matching_orthogonal`, then orthogonal maps of every
  class the traced program admits them for, learned on the loss of interpolated
  networks (`lmc.align.continuous.learned`). `batches` yield (inputs, labels); the loss is the
  model's cross-entropy unless `loss_fn(params, batch)` is given. Called with a spec
  first, `learned_matching` is the spec-level method itself. `maps="invertible"`:
  general invertible per-head maps (`lmc.align.continuous.invertible`); `dual=True`: maps on
  both endpoints.
- `lowrank_control`: learned matching's capacity control, a low-rank correction of B
  with its number of free parameters (`lmc.align.continuous.lowrank`).
"""

from __future__ import annotations

import jax

from lmc.align.continuous import invertible, learned, lowrank, orthogonal, rotary
from lmc.align.discrete.weight_matching import weight_matching
from lmc.align.spec import PermutationSpec, apply_permutation, get_leaf, nested_units
from lmc.align.tracing.trace import specs_from_model
from lmc.errors import UserError

# Plain weight matching's visiting orders tried before the nested refinement.
RESTARTS = 4


def _model(model):
    from lmc.models import as_model

    return as_model(model)


def _eval_fn(model, tree_a):
    """params -> logits of A's model state in eval mode (what the symmetry checks read)."""
    state = tree_a["model_state"]
    return lambda params, x: model.apply(params, state, x, False)[0]


def _nested_specs(model, example_input):
    """(plain spec, nested spec) of the model; a UserError without attention heads."""
    plain, spec = specs_from_model(model, example_input)
    if not nested_units(spec):
        raise UserError(
            "weight_matching_heads, weight_matching_orthogonal and learned_matching need "
            "nested units (attention heads): every permutation of this model's traced spec "
            "is plain; use weight_matching"
        )
    return plain, spec


def weight_matching_heads(
    model, tree_a, tree_b, example_input, *, key=None, max_iter: int = 100, restarts=RESTARTS
):
    """B aligned to A over heads and per-head permutations; returns (tree, info).

    One weight matching over the nested spec, from the identity, in `restarts`
    visiting orders (the best kept). info: `spec` (the nested spec), `plain_spec`,
    `perms`, `sweeps`, `restart_objectives` and `objective_heads` (the final J)."""
    model = _model(model)
    key = jax.random.key(0) if key is None else key
    plain, spec = _nested_specs(model, example_input)
    perms, info = weight_matching(
        spec, tree_a, tree_b, key=key, max_iter=int(max_iter), restarts=int(restarts)
    )
    return apply_permutation(spec, perms, tree_b), {
        "spec": spec,
        "plain_spec": plain,
        "perms": perms,
        "sweeps": int(info["sweeps"]),
        "restart_objectives": info.get("restart_objectives", []),
        "objective_heads": float(info["objective"][-1]),
    }


def weight_matching_orthogonal(
    model,
    tree_a,
    tree_b,
    example_input,
    *,
    key=None,
    max_iter: int = 100,
    restarts=RESTARTS,
    rounds: int = 3,
):
    """Weight matching over heads and per-head permutations alternated with the
    orthogonal residual map, `rounds` times, on the models with their norms' gains
    folded into the readers (the first round's matching in `restarts` visiting
    orders); returns (tree, info).

    info: `spec` (the nested spec), `plain_spec`, `sweeps` and `restart_objectives`
    of the first round, `objective_orthogonal` (J of the folded models after each
    round), and `params_spec` / `roles` (the nested spec over the params and the
    residual stream's norms), which `learned_matching` continues from."""
    model = _model(model)
    key = jax.random.key(0) if key is None else key
    plain, spec = _nested_specs(model, example_input)
    fn = _eval_fn(model, tree_a)
    pspec = spec.subtree("params") if spec.is_combined() else spec
    roles = orthogonal.roles(fn, plain.subtree("params"), tree_a["params"], example_input)
    orthogonal.check_rotation(fn, roles, tree_a["params"], example_input)
    params_b, orth = orthogonal.weight_matching_orthogonal(
        pspec, roles, tree_a["params"], tree_b["params"], key=key, rounds=rounds,
        restarts=restarts, max_iter=max_iter,
    )  # fmt: skip
    info = {
        "spec": spec,
        "plain_spec": plain,
        "sweeps": int(orth["sweeps"]),
        "restart_objectives": orth["restart_objectives"],
        "objective_orthogonal": [float(v) for v in orth["objective"]],
        "params_spec": pspec,
        "roles": roles,
    }
    return {"params": params_b, "model_state": tree_b["model_state"]}, info


def learned_matching(model, *args, **kwargs):
    """The transformer recipe (`model, tree_a, tree_b, example_input, batches`), or
    the spec-level method when the first argument is a PermutationSpec (see
    `lmc.align.continuous.learned.learned_matching`)."""
    if isinstance(model, PermutationSpec):
        return learned.learned_matching(model, *args, **kwargs)
    return _learned_recipe(model, *args, **kwargs)


def _classes(model, tree_a, example_input, spec, roles, maps: str):
    """(spec, the continuous classes of `maps` the traced program admits, the
    residual stream excluded): "orthogonal", or "invertible" (general invertible maps,
    and per-pair scale-rotations of rotary query/key, for which the spec is extended
    by their axes)."""
    fn, params = _eval_fn(model, tree_a), tree_a["params"]
    exclude = (roles.residual,)
    if maps == "orthogonal":
        return spec, learned.orthogonal_classes(fn, spec, params, example_input, exclude=exclude)
    if maps != "invertible":
        raise UserError(
            f"learned matching: maps must be 'orthogonal' or 'invertible', got {maps!r}"
        )
    found = invertible.invertible_classes(fn, spec, params, example_input, exclude=exclude)
    extended, blocks = rotary.rotary_classes(fn, spec, params, example_input)
    return (extended, found + blocks) if blocks else (spec, found)


def _loss(model, tree_a, loss_fn):
    if loss_fn is not None:
        return loss_fn
    from lmc.evaluate.metrics import cross_entropy

    state = tree_a["model_state"]

    def loss(params, batch):
        logits, _ = model.apply(params, state, batch[0], False)
        return cross_entropy(logits, batch[1]).mean()

    return loss


def _start(model, tree_a, tree_b, example_input, key, max_iter, restarts, rounds, maps):
    """Where the learned methods and their control start: B aligned by
    `weight_matching_orthogonal`, its info, and the spec and classes of `maps`."""
    start, info = weight_matching_orthogonal(
        model, tree_a, tree_b, example_input, key=key, max_iter=max_iter, restarts=restarts,
        rounds=rounds,
    )  # fmt: skip
    spec, classes = _classes(model, tree_a, example_input, info["params_spec"], info["roles"], maps)
    return start, info, spec, classes


def _learned_recipe(
    model,
    tree_a,
    tree_b,
    example_input,
    batches,
    *,
    loss_fn=None,
    key=None,
    steps: int = 300,
    learning_rate: float = 1e-2,
    alpha: tuple[float, float] = (0.2, 0.8),
    max_iter: int = 100,
    restarts=RESTARTS,
    rounds: int = 3,
    maps: str = "orthogonal",
    dual: bool = False,
    holdout=(),
    eval_every: int = 50,
):
    """B aligned by `weight_matching_orthogonal`, then with learned maps (`maps`:
    "orthogonal", or "invertible" for general invertible per-head maps; `dual`: both
    endpoints learn maps; `holdout`: batches for early stopping); returns (tree,
    info): the orthogonal recipe's info plus `steps`, `classes`, `losses` (path loss
    per step), `free_parameters` and, with `holdout`, `best_step`."""
    model = _model(model)
    key = jax.random.key(0) if key is None else key
    start, info, spec, classes = _start(
        model, tree_a, tree_b, example_input, key, max_iter, restarts, rounds, maps
    )
    roles = info["roles"]
    params_b, learned_info = learned.learned_matching(
        spec, roles, classes, tree_a["params"], start["params"], _loss(model, tree_a, loss_fn),
        batches, key=key, steps=steps, learning_rate=learning_rate, alpha=alpha, dual=dual,
        holdout=holdout, eval_every=eval_every,
    )  # fmt: skip
    info.update({k: v for k, v in learned_info.items() if k != "seconds"})
    return {"params": params_b, "model_state": tree_b["model_state"]}, info


def lowrank_control(
    model,
    tree_a,
    tree_b,
    example_input,
    batches,
    *,
    loss_fn=None,
    key=None,
    steps: int = 300,
    learning_rate: float = 1e-2,
    alpha: tuple[float, float] = (0.2, 0.8),
    max_iter: int = 100,
    restarts=RESTARTS,
    rounds: int = 3,
    maps: str = "invertible",
    holdout=(),
    eval_every: int = 50,
):
    """Learned matching's capacity control (`lmc.align.continuous.lowrank`): from the same start
    (`weight_matching_orthogonal`), a low-rank correction of B with about as many free
    parameters as learned matching with `maps` would learn, trained on the same path
    loss; returns (tree of B', info with `rank`, `free_parameters`, `budget`)."""
    model = _model(model)
    key = jax.random.key(0) if key is None else key
    start, info, spec, classes = _start(
        model, tree_a, tree_b, example_input, key, max_iter, restarts, rounds, maps
    )
    roles = info["roles"]
    d = int(jax.numpy.shape(get_leaf(tree_a["params"], roles.norms[0].scale))[0])
    budget = learned.free_parameters(learned._initial(spec, classes, d))
    rank = lowrank.rank_for(start["params"], budget)
    params_b, control_info = lowrank.lowrank_control(
        tree_a["params"], start["params"], _loss(model, tree_a, loss_fn), batches, rank=rank,
        key=key, steps=steps, learning_rate=learning_rate, alpha=alpha, holdout=holdout,
        eval_every=eval_every,
    )  # fmt: skip
    info.update({k: v for k, v in control_info.items() if k != "seconds"}, budget=budget)
    return {"params": params_b, "model_state": tree_b["model_state"]}, info
