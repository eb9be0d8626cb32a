"""Learned matching over continuous symmetries: maps trained on the path loss.

Theus et al. (2025) reach near-zero barriers between independently trained
transformers by *learning* the alignment: the transformations of B are parameters,
trained so that the interpolations (1 - alpha) A + alpha T(B), alpha drawn around the
midpoint, have low training loss. Permutations are discrete; the classes that make
this work on transformers are continuous:

- the residual stream: one orthogonal R fixing the all-ones direction, on the model
  with its norms' gains folded into their readers (`lmc.align.continuous.orthogonal`);
- every permutation of the spec whose axes admit *any* orthogonal map, e.g. the
  query/key and value/output dimensions within a head (q k^T and v W_o are unchanged
  by q -> q O, k -> k O and v -> v O, W_o -> O^T W_o). Which classes qualify is not
  assumed: `orthogonal_classes` applies a random orthogonal element of each candidate
  to the traced function and keeps those that leave the outputs unchanged (an MLP's
  units, behind an elementwise nonlinearity, do not; heads, behind a per-head
  softmax, do not). A stacked (per-head) permutation gets one map per index.

Each map is the matrix exponential of a learned skew-symmetric matrix, so every
iterate is exactly orthogonal and the model's function never changes: only the
interpolation does. The permutations found before (the start, e.g. weight matching
with the orthogonal residual rounds) stay fixed.

The per-head classes are larger than orthogonal: q -> q M, k -> k M^-T (and v, W_o
likewise) for any invertible M. Classes from `invertible.invertible_classes` (which
also record which leaves take M^-T) get maps exp(X) with X a general generator:
invertible at every iterate, the identity at the start, with exp(-X^T) as the exact
inverse transpose. `dual=True` learns maps on both endpoints toward a shared path
(Li & Shen 2026), and `holdout` batches stop early on the held-out path loss (`fit`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmc.align.axes import map_axis
from lmc.align.continuous import invertible, orthogonal, rotary
from lmc.align.spec import PermutationSpec, get_leaf, set_leaves
from lmc.errors import UserError

Path = tuple[str, ...]


def apply_maps(spec: PermutationSpec, maps: dict, params):
    """`params` with each permutation `name` of `maps` replaced by the matrices
    `maps[name]` ((n, n), or (L, n, n) when stacked) on every axis it acts on."""
    updates: dict[Path, jnp.ndarray] = {}
    for name, m in maps.items():
        for ref in spec.axes[name]:
            x = updates.get(ref.path, get_leaf(params, ref.path))
            updates[ref.path] = map_axis(jnp.asarray(x), m, ref.axis, ref.stack)
    return set_leaves(params, updates)


def _random_orthogonal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=shape))
    return q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]


def orthogonal_classes(
    fn: Callable, spec: PermutationSpec, params, *args, exclude=(), seed: int = 0, rtol=1e-4
) -> tuple[str, ...]:
    """Permutations of `spec` (paths relative to `params`) that are also symmetries
    under any orthogonal map of their axes, checked numerically on `fn(params, *args)`.

    Candidates: every permutation not in `exclude` whose axes are whole (unblocked).
    Each gets a random orthogonal element alone; it qualifies if the outputs change
    by at most `rtol` relative to their scale."""
    rng = np.random.default_rng(seed)
    call, want, scale = invertible.reference_outputs(fn, params, *args)
    found = []
    for name in spec.names:
        if name in exclude or any(r.inner != 1 for r in spec.axes[name]):
            continue
        n = spec.sizes[name]
        if n < 2:
            continue
        shape = (spec.stacks[name], n, n) if name in spec.stacks else (n, n)
        m = jnp.asarray(_random_orthogonal(shape, rng), jnp.float32)
        got = np.asarray(call(apply_maps(spec, {name: m}, params), *args), np.float64)
        if float(np.abs(got - want).max()) / scale <= rtol:
            found.append(name)
    return tuple(found)


def _expm_skew(s):
    s = s - jnp.swapaxes(s, -1, -2)
    return jax.vmap(jax.scipy.linalg.expm)(s) if s.ndim == 3 else jax.scipy.linalg.expm(s)


def _rotation(theta, basis):
    """R = Q exp(S - S^T) Q^T + 1 1^T / d: orthogonal, R 1 = 1 (Q: basis of 1's complement)."""
    d = basis.shape[0]
    return basis @ _expm_skew(theta) @ basis.T + jnp.ones((d, d), basis.dtype) / d


def _rotate(roles: orthogonal.Roles, r, params):
    skip = roles.norm_leaves()
    updates = {
        path: map_axis(jnp.asarray(get_leaf(params, path)), r, axis)
        for path, axis in roles.axes
        if path not in skip
    }
    return set_leaves(params, updates)


def _initial(spec: PermutationSpec, classes, d: int | None) -> dict:
    """Zero generators (T = identity): skew ones for orthogonal classes (names), general
    ones for invertible classes (`MapClass`), and the residual rotation's."""
    theta: dict = {"maps": {}, "inv": {}, "rot": {}}
    for c in classes:
        shape, n = spec.shape(_name(c)), spec.sizes[_name(c)]
        if isinstance(c, rotary.BlockClass):  # (log scale, angle) per pair
            theta["rot"][c.name] = jnp.zeros(shape[:-1] + (n // 2, 2), jnp.float32)
            continue
        kind = "inv" if isinstance(c, invertible.MapClass) else "maps"
        theta[kind][_name(c)] = jnp.zeros(shape + (n,), jnp.float32)
    if d is not None:
        theta["residual"] = jnp.zeros((d - 1, d - 1), jnp.float32)
    return theta


def _name(c) -> str:
    return c if isinstance(c, str) else c.name


def free_parameters(theta: dict) -> int:
    """Degrees of freedom of the maps: n(n-1)/2 per skew generator, n^2 per general one,
    2 per rotary pair."""
    count = 0
    for key, tree in theta.items():
        for x in jax.tree.leaves(tree):
            if key == "rot":
                count += x.size
                continue
            n = x.shape[-1]
            per = n * n if key == "inv" else n * (n - 1) // 2
            count += per * int(np.prod(x.shape[:-2]))
    return count


def fit(path_loss, theta, batches, *, steps, learning_rate, alphas, holdout=(), eval_every=50):
    """Adam on `path_loss(theta, batch, a)`, one batch and one `alphas[i]` per step.

    With `holdout` batches, the path loss on them (at the ends and middle of the alpha
    range) is measured at step 0 and every `eval_every` steps, and the theta with the
    lowest one is returned: early stopping on data the maps were not trained on.
    Returns (theta, info with `losses`, `steps`, and `holdout_losses`, `best_step`)."""
    # Cosine decay: the late steps, with small batches, would otherwise keep moving
    # the maps by the noise of single batches.
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, max(1, int(steps))))

    @jax.jit
    def step(theta, opt_state, batch, a):
        loss, grads = jax.value_and_grad(path_loss)(theta, batch, a)
        updates, opt_state = optimizer.update(grads, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, loss

    held = [(b, float(a)) for b in holdout for a in np.linspace(min(alphas), max(alphas), 3)]
    held_loss = jax.jit(path_loss)
    best, best_loss, best_step, curve = theta, np.inf, 0, []

    def check(i, theta):
        nonlocal best, best_loss, best_step
        value = float(np.mean([held_loss(theta, b, a) for b, a in held]))
        curve.append([i, value])
        if value < best_loss:
            best, best_loss, best_step = theta, value, i

    opt_state = optimizer.init(theta)
    losses = []
    for i, batch in zip(range(int(steps)), batches, strict=False):
        if held and i % int(eval_every) == 0:
            check(i, theta)
        theta, opt_state, loss = step(theta, opt_state, batch, float(alphas[i]))
        losses.append(float(loss))
    info = {"losses": losses, "steps": len(losses)}
    if not held:
        return theta, info
    check(len(losses), theta)
    return best, {**info, "holdout_losses": curve, "best_step": best_step}


def learned_matching(
    spec: PermutationSpec,
    roles: orthogonal.Roles | None,
    classes: Iterable,
    params_a,
    params_b,
    loss_fn: Callable,
    batches: Iterable,
    *,
    key=None,
    steps: int = 300,
    learning_rate: float = 1e-2,
    alpha: tuple[float, float] = (0.2, 0.8),
    dual: bool = False,
    holdout: Sequence = (),
    eval_every: int = 50,
):
    """B (already permuted to match A) with maps learned on the path loss.

    `spec` (paths relative to the params), `roles` (the residual stream, or None) and
    `classes` say what is learned: permutation names from `orthogonal_classes` get
    orthogonal maps, `invertible.MapClass`es from `invertible.invertible_classes`
    general invertible ones (exp of a general generator, so every iterate is
    invertible and its inverse is exp(-X), never a numerical inverse), and
    `rotary.BlockClass`es a scale and an angle per rotary pair (`spec` then the
    extended one `rotary.rotary_classes` returns).
    `loss_fn(params, batch)` is a training loss; each of `steps` steps takes one batch
    from `batches` and one interpolation weight drawn uniformly from `alpha`, and Adam
    (`learning_rate`, cosine-decayed to 0) follows the gradient of the loss at
    (1 - alpha) A + alpha T(B) with respect to the generators (all zero at the start:
    T is the identity). `_rotate` is `orthogonal.rotate` in jnp, so gradients flow.

    `dual`: both endpoints learn maps toward a shared path (Li & Shen 2026): the loss
    is taken at (1 - alpha) T_A(A) + alpha T_B(B). Every map is linear in the weights
    and a symmetry for any weights, so that path is T_A of the path from A to
    T_A^-1 T_B(B), with the same losses: B is returned as T_A^-1 T_B(B) and the
    engine's line from A measures exactly the learned path. `holdout`: batches for
    early stopping (see `fit`).

    Returns (params of T(B) in A's norm gauge, info with `losses` per step, `steps`,
    `free_parameters`). The result computes the same function as `params_b`; with
    `roles` the interpolation is that of the folded models (see `orthogonal.unfold`)."""
    t0 = time.perf_counter()
    classes = tuple(classes)
    if roles is None and not classes:
        raise UserError(
            "learned matching found no continuous symmetry to learn: no residual stream "
            "with foldable norms and no permutation whose axes admit orthogonal maps; "
            "use ste (learned permutations) instead"
        )
    lo, hi = (float(a) for a in alpha)
    if not 0.0 <= lo <= hi <= 1.0:
        raise UserError(
            f"learned matching: alpha range must satisfy 0 <= lo <= hi <= 1, got {alpha}"
        )
    key = jax.random.key(0) if key is None else key
    fold = (lambda p: orthogonal.fold(roles, p)) if roles is not None else (lambda p: p)
    pa = jax.tree.map(jnp.asarray, fold(params_a))
    pb = jax.tree.map(jnp.asarray, fold(params_b))
    basis, d = None, None
    if roles is not None:
        d = int(np.shape(get_leaf(params_a, roles.norms[0].scale))[0])
        basis = jnp.asarray(orthogonal._complement(d), jnp.float32)
    inv_classes = tuple(c for c in classes if isinstance(c, invertible.MapClass))
    rot_classes = tuple(c for c in classes if isinstance(c, rotary.BlockClass))

    def transform(theta, p):
        p = apply_maps(spec, {n: _expm_skew(s) for n, s in theta["maps"].items()}, p)
        p = invertible.apply_pairs(spec, inv_classes, invertible.from_generators(theta["inv"]), p)
        p = invertible.apply_pairs(
            spec, rot_classes, rotary.block_pairs(theta["rot"], rot_classes), p
        )
        if basis is not None:
            p = _rotate(roles, _rotation(theta["residual"], basis), p)
        return p

    def mix(a, x, y):
        return jax.tree.map(lambda u, v: (1 - a) * u + a * v, x, y)

    def path_loss(theta, batch, a):
        if dual:
            return loss_fn(mix(a, transform(theta["a"], pa), transform(theta["b"], pb)), batch)
        return loss_fn(mix(a, pa, transform(theta, pb)), batch)

    start = _initial(spec, classes, d)
    theta0 = {"a": start, "b": start} if dual else start
    alphas = np.asarray(jax.random.uniform(key, (int(steps),), minval=lo, maxval=hi))
    theta, info = fit(path_loss, theta0, batches, steps=steps, learning_rate=learning_rate,
                      alphas=alphas, holdout=holdout, eval_every=eval_every)  # fmt: skip
    if dual:  # T_A^-1 T_B(B): every generator negated is the inverse map
        out = transform(jax.tree.map(jnp.negative, theta["a"]), transform(theta["b"], pb))
    else:
        out = transform(theta, pb)
    out = jax.tree.map(np.asarray, out)
    if roles is not None:
        out = orthogonal.unfold(roles, out, params_a)
    info.update(classes=[_name(c) for c in classes], residual=roles is not None, dual=dual,
                free_parameters=free_parameters(start) * (2 if dual else 1),
                seconds=time.perf_counter() - t0)  # fmt: skip
    if inv_classes:
        gens = theta["b"]["inv"] if dual else theta["inv"]
        info["max_condition"] = max(invertible.condition_numbers(gens).values())
    return out, info
