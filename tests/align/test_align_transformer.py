"""Richer transformer symmetries (issue 14): heads as units with per-head within-head
permutations, and the orthogonal residual stream. Each class: a random element leaves
the logits unchanged (learned and rotary positions), and weight matching recovers a
planted element."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmc import align
from lmc.align.continuous import orthogonal
from lmc.align.spec import get_leaf, nested_units
from lmc.errors import UserError
from lmc.models.transformer import build_transformer

POSITIONS = ("learned", "rotary")


def lm(positions, width=32, heads=4, seed=0):
    model = build_transformer(
        256, width=width, depth=2, heads=heads, context=16, positions=positions
    )
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)), jnp.int32)
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]
    # Random weights of unit scale: a wrong symmetry changes the logits by O(1).
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)

    def fn(p, t):
        return model.apply({"params": p}, t)

    return fn, params, tokens


@pytest.mark.parametrize("positions", POSITIONS)
def test_nested_heads_are_derived_and_invariant(positions):
    fn, params, tokens = lm(positions)
    spec = align.spec_from_function(fn, params, tokens, nested=True)
    units = nested_units(spec)
    # learned: Q/K and V/O within-head per head, in both layers; rotary fixes Q/K.
    assert len(units) == (4 if positions == "learned" else 2)
    assert len(set(units.values())) == 2  # one head permutation per layer
    for name in units:
        assert spec.shape(name) == (4, 8)
    for seed in range(3):
        report = align.check(fn, spec, params, tokens, key=jax.random.key(seed))
        assert report.moved == len(spec.axes)
        # float32 logits of size ~5: rounding is ~1e-6; a wrong element moves them O(1)
        assert report.max_change < 1e-4, report


def test_per_head_permutation_on_one_side_is_not_a_symmetry():
    """Control: the check above can fail. Permuting each head's value dimensions
    without the matching output rows changes the logits."""
    fn, params, tokens = lm("learned")
    spec = align.spec_from_function(fn, params, tokens, nested=True)
    name = next(n for n in nested_units(spec) if "value" in n)
    value_only = align.PermutationSpec.from_axes(
        {name: [r for r in spec.axes[name] if "value" in r.path[-2]]},
        sizes={name: spec.sizes[name]},
        stacks={name: spec.stacks[name]},
    )
    perms = align.random_permutations(value_only, jax.random.key(0))
    moved = align.apply_permutation(value_only, perms, params)
    change = float(jnp.abs(fn(moved, tokens) - fn(params, tokens)).max())
    assert change > 0.1


@pytest.mark.parametrize("positions", POSITIONS)
def test_weight_matching_recovers_planted_heads(positions):
    fn, params, tokens = lm(positions)
    spec = align.spec_from_function(fn, params, tokens, nested=True)
    rng = np.random.default_rng(1)
    for seed in range(2):
        planted = align.random_permutations(spec, jax.random.key(seed + 1), params)
        other = align.apply_permutation(spec, planted, params)
        other = jax.tree.map(lambda x: x + 0.01 * rng.normal(size=x.shape), other)
        perms, info = align.weight_matching(spec, params, other, key=jax.random.key(seed))
        back = align.apply_permutation(spec, perms, other)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
            # recovered exactly: only the planted noise (sd 0.01) remains
            assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.1
        assert info["objective"] == sorted(info["objective"])  # block descent is monotone


def rms_twin(positions):
    return build_transformer(256, width=32, depth=2, heads=4, context=16, positions=positions,
                             norm="rmsnorm")  # fmt: skip


@pytest.mark.parametrize("positions", POSITIONS)
def test_norm_rewrites_and_rotations_keep_the_logits(positions):
    fn, params, tokens = lm(positions)
    spec = align.spec_from_function(fn, params, tokens)
    roles = orthogonal.roles(fn, spec, params, tokens)
    assert len(roles.norms) == 5  # ln1, ln2 of two blocks, ln_f: found in the program
    want = np.asarray(fn(params, tokens))
    tol = 1e-4 * np.abs(want).max()  # float32 rounding of O(5) logits; wrong: O(1)
    folded = orthogonal.fold(roles, params)
    assert np.abs(np.asarray(fn(folded, tokens)) - want).max() < tol
    rms = orthogonal.to_rmsnorm(roles, params)
    got = rms_twin(positions).apply({"params": rms}, tokens)
    assert np.abs(np.asarray(got) - want).max() < tol
    rng = np.random.default_rng(0)
    for _ in range(2):
        r = orthogonal.random_rotation(32, rng)
        rotated = orthogonal.rotate(roles, r, folded)
        assert np.abs(np.asarray(fn(rotated, tokens)) - want).max() < tol
        # the RMSNorm form takes any rotation of its centered stream too
        rotated_rms = orthogonal.rotate(roles, r, rms)
        got = rms_twin(positions).apply({"params": rotated_rms}, tokens)
        assert np.abs(np.asarray(got) - want).max() < tol
    # control: a rotation that moves the ones vector breaks the LayerNorm form
    q, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    assert np.abs(np.asarray(fn(orthogonal.rotate(roles, q, folded), tokens)) - want).max() > 0.1


def test_subspace_rotation_is_the_dense_one_and_the_check_refuses_a_broken_stream():
    """The symmetry check's cheap rotation (R = I + U W on a random subspace) maps every
    residual leaf as the dense matrix I + U W does, is a symmetry of the model, and a
    program with an elementwise op on the stream is refused."""
    fn, params, tokens = lm("learned")
    roles = orthogonal.roles(fn, align.spec_from_function(fn, params, tokens), params, tokens)
    folded = orthogonal.fold(roles, params)
    u, w = orthogonal.random_rotation(32, np.random.default_rng(1), rank=6)
    dense = np.eye(32) + u @ w
    assert np.allclose(dense @ dense.T, np.eye(32), atol=1e-12)
    assert np.allclose(dense @ np.ones(32), np.ones(32), atol=1e-12)
    by_factors = orthogonal.rotate(roles, (u, w), folded)
    by_matrix = orthogonal.rotate(roles, dense, folded)
    for a, b in zip(jax.tree.leaves(by_factors), jax.tree.leaves(by_matrix), strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-5
    want = np.asarray(fn(params, tokens))
    assert np.abs(np.asarray(fn(by_factors, tokens)) - want).max() < 1e-4 * np.abs(want).max()
    assert orthogonal.check_rotation(fn, roles, params, tokens) < 1e-4

    def squashed(p, t):  # tanh on the embedding: written to the stream elementwise
        return fn({**p, "embed": {"embedding": jnp.tanh(p["embed"]["embedding"])}}, t)

    plain = align.spec_from_function(squashed, params, tokens)
    roles = orthogonal.roles(squashed, plain, params, tokens)
    with pytest.raises(UserError, match="not rotation-symmetric"):
        orthogonal.check_rotation(squashed, roles, params, tokens)


def test_orthogonal_matching_recovers_planted_rotation_and_heads():
    fn, params, tokens = lm("learned")
    plain = align.spec_from_function(fn, params, tokens)
    spec = align.spec_from_function(fn, params, tokens, nested=True)
    roles = orthogonal.roles(fn, plain, params, tokens)
    rng = np.random.default_rng(3)
    planted = align.random_permutations(spec, jax.random.key(5), params)
    other = align.apply_permutation(spec, planted, orthogonal.fold(roles, params))
    other = orthogonal.rotate(roles, orthogonal.random_rotation(32, rng), other)
    # B in its own gauge: other norm gains and biases, same function
    gauge = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    other = orthogonal.unfold(roles, other, gauge)
    assert np.abs(np.asarray(fn(other, tokens)) - np.asarray(fn(params, tokens))).max() < 1e-3
    aligned, info = orthogonal.weight_matching_orthogonal(spec, roles, params, other)
    assert np.abs(np.asarray(fn(aligned, tokens)) - np.asarray(fn(params, tokens))).max() < 1e-3
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(aligned), strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-3  # B is A again


def test_orthogonal_rounds_report_the_objective_of_the_folded_weights():
    """Each round's J is tr(C R) from the Procrustes cost; checked against <A, T(B)>
    summed leaf by leaf in float64 over the folded models, with a random second model."""
    fn, params, tokens = lm("learned")
    plain = align.spec_from_function(fn, params, tokens)
    spec = align.spec_from_function(fn, params, tokens, nested=True)
    roles = orthogonal.roles(fn, plain, params, tokens)
    rng = np.random.default_rng(4)
    other = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    aligned, info = orthogonal.weight_matching_orthogonal(spec, roles, params, other, rounds=2)
    fa, fb = orthogonal.fold(roles, params), orthogonal.fold(roles, aligned)
    paths = {p for p, _ in roles.axes} - roles.norm_leaves()
    direct = sum(
        float(np.vdot(np.float64(get_leaf(fa, p)), np.float64(get_leaf(fb, p)))) for p in paths
    )
    assert abs(info["objective"][-1] - direct) < 1e-4 * abs(direct)
    assert info["objective"][1] >= info["objective"][0] - 1e-6 * abs(direct)


def within_head(spec, names):
    """The nested (per-head) permutations among `names`."""
    return {n for n in names if n in nested_units(spec)}


@pytest.mark.parametrize("positions", POSITIONS)
def test_orthogonal_classes_are_the_within_head_maps_and_keep_the_logits(positions):
    """Learned matching's continuous classes, found by the numeric test: per-head
    orthogonal maps of query/key (learned positions only) and of value/output; never
    the MLP units or the heads. A random element leaves the logits unchanged."""
    from lmc.align.continuous import learned

    fn, params, tokens = lm(positions)
    plain = align.spec_from_function(fn, params, tokens)
    spec = align.spec_from_function(fn, params, tokens, nested=True)
    roles = orthogonal.roles(fn, plain, params, tokens)
    classes = learned.orthogonal_classes(fn, spec, params, tokens, exclude=(roles.residual,))
    assert set(classes) == set(nested_units(spec))  # exactly the within-head families
    assert len(classes) == (4 if positions == "learned" else 2)
    rng = np.random.default_rng(1)
    want = np.asarray(fn(params, tokens))
    maps = {n: jnp.asarray(learned._random_orthogonal(spec.shape(n) + (spec.sizes[n],), rng),
                           jnp.float32) for n in classes}  # fmt: skip
    got = np.asarray(fn(learned.apply_maps(spec, maps, params), tokens))
    assert np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())
    # an MLP's units are not orthogonally symmetric (GELU): the same map moves the logits
    mlp = next(n for n in spec.names if n not in nested_units(spec) and spec.sizes[n] == 128)
    bad = {mlp: jnp.asarray(learned._random_orthogonal((128, 128), rng), jnp.float32)}
    assert np.abs(np.asarray(fn(learned.apply_maps(spec, bad, params), tokens)) - want).max() > 0.1


def test_learned_matching_recovers_planted_orthogonal_maps_and_keeps_bs_function():
    """B = A under a planted residual rotation and per-head orthogonal maps, in another
    norm gauge. Learned matching on a path loss that is zero exactly when T(B) = A
    brings the midpoint back to A's function; T(B) still computes B's function."""
    from lmc.align.continuous import learned

    fn, params, tokens = lm("learned")
    plain = align.spec_from_function(fn, params, tokens)
    spec = align.spec_from_function(fn, params, tokens, nested=True)
    roles = orthogonal.roles(fn, plain, params, tokens)
    classes = learned.orthogonal_classes(fn, spec, params, tokens, exclude=(roles.residual,))
    rng = np.random.default_rng(4)

    def near_identity(shape, scale=0.4):
        s = rng.normal(size=shape) * scale / np.sqrt(shape[-1])
        return learned._expm_skew(jnp.asarray(s, jnp.float32))

    folded = orthogonal.fold(roles, params)
    other = learned.apply_maps(spec, {n: near_identity(spec.shape(n) + (spec.sizes[n],))
                                      for n in classes}, folded)  # fmt: skip
    basis = jnp.asarray(orthogonal._complement(32), jnp.float32)
    r = learned._rotation(jnp.asarray(rng.normal(size=(31, 31)) * 0.05, jnp.float32), basis)
    other = orthogonal.rotate(roles, np.asarray(r, np.float64), jax.tree.map(np.asarray, other))
    gauge = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    other = orthogonal.unfold(roles, other, gauge)
    want_a, want_b = np.asarray(fn(params, tokens)), np.asarray(fn(other, tokens))
    assert np.abs(want_b - want_a).max() < 1e-2 * np.abs(want_a).max()  # B is A's function

    def loss(p, batch):
        return jnp.mean((fn(p, batch) - want_a) ** 2)

    def midpoint_loss(b):
        fa, fb = orthogonal.fold(roles, params), orthogonal.fold(roles, b)
        return float(loss(jax.tree.map(lambda x, y: (x + y) / 2, fa, fb), tokens))

    aligned, info = learned.learned_matching(
        spec, roles, classes, params, other, loss, (tokens for _ in range(300)), steps=300,
        learning_rate=3e-2,
    )  # fmt: skip
    assert info["steps"] == 300 and info["residual"]
    assert np.abs(np.asarray(fn(aligned, tokens)) - want_b).max() < 1e-2 * np.abs(want_b).max()
    before, after = midpoint_loss(other), midpoint_loss(aligned)
    assert after < 0.05 * before, (before, after)  # measured: 0.42 -> 0.0086
