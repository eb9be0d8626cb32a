"""Normalization statistics for interpolated networks: stale, RESET or REPAIR.

Interpolating weights shrinks activations (Jordan et al. 2022): the midpoint of two
networks has lower channel variance than either, and for BatchNorm networks the
interpolated running statistics no longer describe the interpolated network. Each
mode produces, for every alpha, the `model_state` and the per-layer corrections
the evaluator uses:

- "none":   running statistics interpolated like weights (the stale-statistics
            artefact, kept to show it); no corrections.
- "reset":  BatchNorm running statistics recomputed for every interpolated network
            from training batches in train mode: the mean over batches of the batch
            means and of the batch variances (a cumulative average, like PyTorch's
            momentum=None reset), not an exponential moving average.
- "repair": REPAIR (Jordan et al. 2022): each corrected layer's output channels
            are rescaled so their mean/std equal (1-a)*stats_A + a*stats_B of the
            endpoints' own statistics on the same batches. Which layers: see
            `layer_hooks.default_repair_layers` (BatchNorm outputs in BN models, with
            running statistics reset at the same time; otherwise hidden Dense/Conv
            outputs). Gathering uses batch moments for the correction, like BatchNorm
            in train mode, so every layer sees repaired inputs in a single pass.

At alpha = 0 and 1 every mode returns the endpoint's own `model_state` and no
correction: curve ends are the networks as trained, so all methods share f(0), f(1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmc.errors import UserError, choose
from lmc.evaluate.endpoints import lerp, lerp_stacked, map_alphas
from lmc.evaluate.layer_hooks import (
    EPS,
    default_repair_layers,
    layer_hooks,
    list_layers,
    recording_hook,
    renormalizing_hook,
)
from lmc.evaluate.placement import Placement

NORMS = ("none", "reset", "repair")


def resolve_norm(norm: str | None, model_state: dict) -> str:
    """None/"auto" picks the default: RESET for models with running statistics, else none."""
    if norm is None or norm == "auto":
        return "reset" if model_state else "none"
    choose("norm", norm, (*NORMS, "auto"))
    if norm == "reset" and not model_state:
        raise UserError(
            "norm='reset' recomputes BatchNorm running statistics, but the model has none "
            "(empty model_state); use norm='repair' (or 'none') for models without BatchNorm"
        )
    return norm


def prepare(
    apply_fn,
    a: dict,
    b: dict,
    alphas: np.ndarray,
    norm: str,
    batches: list[np.ndarray],
    repair_layers=None,
    alpha_chunk: int = 1,
    place: Placement = Placement(),
) -> tuple[dict, dict]:
    """Per-alpha `model_state` (leaves gain a leading alpha axis) and REPAIR corrections.

    `batches`: full training batches for the statistics passes (unused for "none").
    Corrections map layer key -> {"scale", "shift"} of shape (len(alphas), channels).
    Both come back placed by `place` (replicated on its mesh, if any).
    """
    if norm == "none":
        return lerp_stacked(a["model_state"], b["model_state"], alphas), {}
    if not batches:
        raise UserError(f"norm={norm!r} needs at least one full batch of training data")
    # The ends are the endpoints as given (see module docstring): gather statistics for
    # the interior alphas only (alphas run from exactly 0 to exactly 1).
    inner = np.asarray(alphas[1:-1])
    has_bn = bool(a["model_state"])
    keys = _repair_keys(apply_fn, a, batches[0], repair_layers) if norm == "repair" else []

    targets = {}
    if keys:
        stats_a, stats_b = (
            _mean_over(
                batches,
                lambda x, e=e: _endpoint_moments(
                    apply_fn, e["params"], e["model_state"], x, tuple(keys)
                ),
                place,
            )
            for e in (a, b)
        )
        targets = _targets(stats_a, stats_b, inner)

    zero_state = place.replicate(jax.tree.map(np.zeros_like, place.to_host(a["model_state"])))
    states, measured = _mean_over(
        batches,
        lambda x: _interpolated_stats(
            apply_fn, a["params"], b["params"], place.replicate(inner.astype(np.float32)),
            zero_state, place.replicate(targets), x, train=has_bn, alpha_chunk=alpha_chunk,
        ),
        place,
    )  # fmt: skip
    if has_bn:
        states = _undo_momentum(states, _ema_momentum(apply_fn, a, place.batch(batches[0]), place))
    corrections = {}
    for key in keys:
        scale = targets[key]["std"] / np.sqrt(measured[key]["var"] + EPS)
        shift = targets[key]["mean"] - measured[key]["mean"] * scale
        corrections[key] = {"scale": scale, "shift": shift}
    ends = place.to_host((a["model_state"], b["model_state"]))
    return place.replicate(_with_endpoints(states, corrections, *ends))


def _repair_keys(apply_fn, a, x, repair_layers) -> list[str]:
    layers = list_layers(apply_fn, a["params"], a["model_state"], x)
    if repair_layers is None:
        keys = default_repair_layers(layers)
    else:
        known = [key for key, _ in layers]
        unknown = [key for key in repair_layers if key not in known]
        if unknown:
            raise UserError(f"repair_layers {unknown} are not layers of the model; layers: {known}")
        keys = list(repair_layers)
    if not keys:
        raise UserError("REPAIR found no layers to correct; pass repair_layers explicitly")
    return keys


def _mean_over(batches, fn, place: Placement):
    """Mean of `fn(batch)` over batches (as numpy), summed on device: no sync per batch."""
    total = None
    for x in batches:
        out = fn(place.batch(x))
        total = out if total is None else jax.tree.map(jnp.add, total, out)
    return jax.tree.map(lambda t: t / len(batches), place.to_host(total))


@functools.partial(jax.jit, static_argnames=("apply_fn", "keys"))
def _endpoint_moments(apply_fn, params, model_state, x, keys):
    """Per-channel batch moments of the `keys` layers of an endpoint, in eval mode."""
    record = {}
    with layer_hooks(recording_hook(record), keys=keys):
        apply_fn(params, model_state, x, False)
    return record


def _targets(stats_a: dict, stats_b: dict, alphas: np.ndarray) -> dict:
    """REPAIR's goal statistics: interpolated mean and interpolated std, per alpha."""
    w = np.asarray(alphas, np.float32)[:, None]
    targets = {}
    for key in stats_a:
        std_a, std_b = (np.sqrt(s[key]["var"] + EPS) for s in (stats_a, stats_b))
        mean_a, mean_b = (s[key]["mean"] for s in (stats_a, stats_b))
        targets[key] = {
            "mean": ((1 - w) * mean_a + w * mean_b).astype(np.float32),
            "std": ((1 - w) * std_a + w * std_b).astype(np.float32),
        }
    return targets


@functools.partial(jax.jit, static_argnames=("apply_fn", "train", "alpha_chunk"))
def _interpolated_stats(apply_fn, params_a, params_b, alphas, zero_state, targets, x, *,
                        train, alpha_chunk):  # fmt: skip
    """One statistics batch for every interpolated network.

    Returns (running-statistics update starting from zero, batch moments of the
    REPAIR layers), each with a leading alpha axis. Starting the update from zero
    leaves (1 - momentum) * batch statistics, which `_undo_momentum` rescales.
    """

    def one(args):
        alpha, target = args
        record = {}
        with layer_hooks(renormalizing_hook(target, record), keys=target.keys()):
            _, new_state = apply_fn(lerp(params_a, params_b, alpha), zero_state, x, train)
        return new_state, record

    return map_alphas(one, (alphas, targets), alpha_chunk)


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _ema_response(apply_fn, params, model_state, x):
    zeros = jax.tree.map(jnp.zeros_like, model_state)
    ones = jax.tree.map(jnp.ones_like, model_state)
    return apply_fn(params, zeros, x, True)[1], apply_fn(params, ones, x, True)[1]


def _ema_momentum(apply_fn, endpoint: dict, x, place: Placement) -> dict:
    """Each running statistic's EMA momentum, measured rather than assumed.

    A train-mode step maps state s to m * s + (1 - m) * batch_stat, so starting from
    ones and from zeros differs by exactly m. This keeps RESET independent of how a
    model configures BatchNorm, and refuses state that is not a moving average.
    """
    from_zeros, from_ones = place.to_host(
        _ema_response(apply_fn, endpoint["params"], endpoint["model_state"], x)
    )

    def momentum(path, z, o):
        m = o.astype(np.float64) - z.astype(np.float64)
        mid = float(np.median(m))
        if not (0.0 <= mid < 1.0) or np.max(np.abs(m - mid)) > 1e-2:
            raise UserError(
                f"model_state{jax.tree_util.keystr(path)} does not update like a BatchNorm "
                f"running average (measured momentum {m.min():.3g}..{m.max():.3g}); "
                "norm='reset' cannot recompute it, use norm='none'"
            )
        return mid

    return jax.tree.map_with_path(momentum, from_zeros, from_ones)


def _undo_momentum(states: dict, momenta: dict) -> dict:
    return jax.tree.map(lambda s, m: s / np.float32(1.0 - m), states, momenta)


def _with_endpoints(states, corrections, state_a, state_b) -> tuple[dict, dict]:
    """Add alpha 0 and 1 around the interior: own running statistics, no correction."""

    def stack(leaf_a, inner, leaf_b):
        return np.concatenate([leaf_a[None], inner.astype(leaf_a.dtype), leaf_b[None]])

    states = jax.tree.map(stack, state_a, states, state_b)
    corrections = {
        key: {
            "scale": stack(np.ones_like(c["scale"][0]), c["scale"], np.ones_like(c["scale"][0])),
            "shift": stack(np.zeros_like(c["shift"][0]), c["shift"], np.zeros_like(c["shift"][0])),
        }
        for key, c in corrections.items()
    }
    return states, corrections
