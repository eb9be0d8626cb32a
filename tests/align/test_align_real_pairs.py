"""Weight and activation matching on two *different* trained networks, against brute force.

Planted-permutation tests (test_align_weight_matching.py, test_align_methods.py) align
a network with a noisy permuted copy of itself: any cost that ranks the planted answer
first passes, e.g. one built from incoming weights only. Here A and B are two MLPs
trained from different inits, hidden width 6, so every permutation of a layer
(6! = 720) can be scored with numpy on the raw weights and activations, without the
spec, the tracer or the solver:

- weight matching: J = sum over leaves <A, aligned B> is the reported objective; no
  single layer's permutation (all 720) improves J (Algorithm 1's fixed point, on the
  true objective); J is within a hair of the exhaustive optimum over both layers'
  permutations; and matching A with aligned B again returns the identity.
- activation matching: each layer's summed correlation of A's and aligned B's
  post-ReLU features on the given batches is the maximum over all 720 permutations
  (the layers decouple, so this is the exact optimum), and re-aligning gains nothing.

Only the public `lmc.align` API is used; the permutations are read back from the
aligned weights.
"""

import itertools

import jax
import numpy as np
import pytest
from helpers import small_config

from lmc import align, data, models
from lmc.training import Seeds, train

WIDTH = 6
PERMS = np.array(list(itertools.permutations(range(WIDTH))))  # (720, 6)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    c = small_config(**{"data.name": "digits", "model.width": WIDTH, "model.depth": 2,
                        "num_steps": 150})  # fmt: skip
    ds = data.load("digits")
    model = models.from_config(c.model, ds.num_classes)
    tmp = tmp_path_factory.mktemp("pair")
    ends = [
        jax.device_get(train(model=model, dataset=ds, config=c, run_dir=tmp / f"m{s}",
                             seeds=Seeds(s, s, s))["params"])
        for s in (1, 2)
    ]  # fmt: skip
    return model, ds, align.spec_from_model(model, ds.train_x[:2]), *ends


def _np(tree):
    return jax.tree.map(lambda v: np.asarray(v, np.float64), tree)


def _objective(a, b) -> float:
    return sum(
        float(np.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _permute(b, p0, p1):
    """B with hidden units reordered: new unit i of layer l is old unit p_l[i]."""
    return {
        "dense0": {"kernel": b["dense0"]["kernel"][:, p0], "bias": b["dense0"]["bias"][p0]},
        "dense1": {"kernel": b["dense1"]["kernel"][np.ix_(p0, p1)], "bias": b["dense1"]["bias"][p1]},
        "head": {"kernel": b["head"]["kernel"][p1], "bias": b["head"]["bias"]},
    }  # fmt: skip


def _read_perms(b, aligned):
    """(p0, p1) with _permute(b, p0, p1) == aligned, matched column by column."""

    def match(cols_b, cols_aligned):
        return np.array([int(np.flatnonzero((cols_b == c[:, None]).all(0))[0])
                         for c in cols_aligned.T])  # fmt: skip

    return (
        match(b["dense0"]["kernel"], aligned["dense0"]["kernel"]),
        match(b["head"]["kernel"].T, aligned["head"]["kernel"].T),
    )


def _all_objectives(a, b) -> np.ndarray:
    """J for every (p0, p1) pair: (720, 720), computed from the layers' terms."""
    w0 = np.einsum(
        "ik,pik->p", a["dense0"]["kernel"], b["dense0"]["kernel"][:, PERMS].transpose(1, 0, 2)
    )
    w0 += (a["dense0"]["bias"][None] * b["dense0"]["bias"][PERMS]).sum(1)
    b1 = (a["dense1"]["bias"][None] * b["dense1"]["bias"][PERMS]).sum(1)
    head = np.einsum("jc,pjc->p", a["head"]["kernel"], b["head"]["kernel"][PERMS])
    const = float(np.vdot(a["head"]["bias"], b["head"]["bias"]))
    # Coupling through dense1: sum_ij A1[i, j] B1[p0(i), p1(j)].
    onehot = np.eye(WIDTH)[PERMS]  # (720, 6, 6): onehot[p, j, k] = [k == p(j)]
    g = np.einsum("ij,qik->qjk", a["dense1"]["kernel"], b["dense1"]["kernel"][PERMS])
    coupling = np.einsum("qjk,pjk->qp", g, onehot)
    return w0[:, None] + coupling + (b1 + head)[None, :] + const


def test_weight_matching_on_different_trained_networks_against_brute_force(pair):
    _, _, spec, a, b = pair
    spec = spec.subtree("params")
    perms, info = align.weight_matching(spec, a, b, key=jax.random.key(0))
    aligned = _np(align.apply_permutation(spec, perms, b))
    a, b = _np(a), _np(b)
    p0, p1 = _read_perms(b, aligned)
    jax.tree.map(np.testing.assert_array_equal, aligned, _permute(b, p0, p1))
    j = _objective(a, aligned)
    assert info["objective"][-1] == pytest.approx(j, rel=1e-5)

    every = _all_objectives(a, b)
    index = {tuple(p): i for i, p in enumerate(PERMS)}
    i0, i1 = index[tuple(p0)], index[tuple(p1)]
    assert every[i0, i1] == pytest.approx(j, rel=1e-9)
    tol = 1e-6 * abs(j)
    # A fixed point of the true objective: no single layer can do better.
    assert every[:, i1].max() <= j + tol and every[i0, :].max() <= j + tol
    # Close to the global optimum (coordinate descent may stop at a local one), and far
    # above a typical permutation, so the check has teeth.
    best, typical = every.max(), np.median(every)
    assert j >= best - 0.02 * (best - typical), (j, best, typical)
    assert best - typical > 100 * tol
    # Aligning again changes nothing.
    again, _ = align.weight_matching(spec, a, aligned, key=jax.random.key(1))
    for name, p in again.items():
        np.testing.assert_array_equal(np.asarray(p), np.arange(len(p)), err_msg=name)


def _hidden(p, x):
    """Post-ReLU features of both hidden layers (what feeds the next contraction)."""
    h0 = np.maximum(x.reshape(len(x), -1) @ p["dense0"]["kernel"] + p["dense0"]["bias"], 0)
    h1 = np.maximum(h0 @ p["dense1"]["kernel"] + p["dense1"]["bias"], 0)
    return h0, h1


def _correlation(fa, fb) -> np.ndarray:
    da, db = fa - fa.mean(0), fb - fb.mean(0)
    std = np.sqrt((da**2).sum(0))[:, None] * np.sqrt((db**2).sum(0))[None, :]
    return (da.T @ db) / (std + 1e-12)


def test_activation_matching_on_different_trained_networks_is_each_layers_optimum(pair):
    model, ds, spec, a, b = pair
    batches = [np.asarray(ds.train_x[i : i + 128]) for i in range(0, 384, 128)]
    combined = [{"params": p, "model_state": {}} for p in (a, b)]
    perms, _ = align.activation_matching(spec, model, *combined, batches)
    aligned = _np(align.apply_permutation(spec.subtree("params"), perms, b))
    a, b = _np(a), _np(b)
    x = np.concatenate(batches).astype(np.float64)
    for layer, (fa, fb, fal) in enumerate(zip(_hidden(a, x), _hidden(b, x), _hidden(aligned, x),
                                              strict=True)):  # fmt: skip
        corr = _correlation(fa, fb)
        every = corr[np.arange(WIDTH)[None, :], PERMS].sum(1)  # sum_i corr[i, p(i)]
        got = float(np.trace(_correlation(fa, fal)))
        assert got == pytest.approx(every.max(), rel=1e-6), layer
        assert every.max() - np.median(every) > 0.1, layer  # a real choice to get right
    # Aligning again cannot do better. (Not necessarily the identity: B has dead units
    # here, whose zero correlations tie.)
    again, _ = align.activation_matching(
        spec, model, combined[0], {"params": aligned, "model_state": {}}, batches
    )
    twice = _np(align.apply_permutation(spec.subtree("params"), again, aligned))
    for layer, (fa, fal, ftw) in enumerate(
        zip(_hidden(a, x), _hidden(aligned, x), _hidden(twice, x), strict=True)
    ):
        once = np.trace(_correlation(fa, fal))
        assert np.trace(_correlation(fa, ftw)) <= once + 1e-9 * abs(once), layer
