"""Specs of flax models written the way public code is: a ViT whose [cls] token is
broadcast with `jnp.tile`, and a transformer whose blocks are stacked by `nn.scan` +
`nn.remat` (one permutation per layer), against its unscanned twin."""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmc import align
from tests.oracles.flax_models import ScannedLM, UnrolledLM, ViT, random_variables, unroll

RNG = np.random.default_rng(0)
IMAGES = jnp.asarray(RNG.normal(size=(4, 8, 8, 3)), jnp.float32)
TOKENS = jnp.asarray(RNG.integers(0, 32, size=(4, 8)), jnp.int32)
DEPTH = 3


def owner(spec, *path_and_axis):
    """The permutation acting on params/<path>[axis] (None if none does)."""
    *path, axis = path_and_axis
    for name, refs in spec.axes.items():
        if any(r.path == ("params", *path) and r.axis == axis for r in refs):
            return name
    return None


def planted(spec, tree, seed, noise=0.01):
    """B = A with a random element of the spec applied, plus a little noise."""
    perms = align.random_permutations(spec, jax.random.key(seed), tree)
    b = align.apply_permutation(spec, perms, tree)
    rng = np.random.default_rng(seed)
    b = jax.tree.map(lambda v: v + noise * rng.normal(size=v.shape).astype(np.float32), b)
    return b, align.inverse(perms)


def same(perms, expected) -> bool:
    return all(np.array_equal(np.asarray(perms[k]), np.asarray(expected[k])) for k in expected)


# ---- ViT ------------------------------------------------------------------------
@functools.cache
def vit():
    model = ViT()
    variables = random_variables(model, 0, IMAGES)
    return model, variables, align.spec_from_function(model.apply, variables, IMAGES)


def test_vit_finds_every_symmetry():
    model, variables, spec = vit()
    assert not spec.notes, spec.notes  # no unknown primitive (jnp.tile has a rule)
    residual = owner(spec, "embed", "kernel", 3)
    assert residual is not None
    for leaf in (("cls", 2), ("pos_embedding", 2), ("head", "kernel", 0), ("ln_f", "scale", 0)):
        assert owner(spec, *leaf) == residual, leaf
    per_layer = set()
    for b in ("block0", "block1"):
        attn = (b, "attn")
        classes = {
            "mlp": owner(spec, b, "fc1", "kernel", 1),
            "heads": owner(spec, *attn, "query", "kernel", 1),
            "qk": owner(spec, *attn, "query", "kernel", 2),
            "vo": owner(spec, *attn, "value", "kernel", 2),
        }
        assert None not in classes.values(), classes
        assert owner(spec, *attn, "key", "kernel", 2) == classes["qk"]
        assert owner(spec, *attn, "out", "kernel", 1) == classes["vo"]
        assert owner(spec, *attn, "out", "kernel", 0) == classes["heads"]
        assert owner(spec, b, "fc2", "kernel", 0) == classes["mlp"]
        assert owner(spec, b, "ln1", "scale", 0) == residual
        per_layer |= set(classes.values())
    assert len(per_layer) == 8 and len(spec.axes) == 9
    report = align.check(model.apply, spec, variables, IMAGES)
    assert report.invariant and report.moved >= 7, report
    assert report.max_change < 1e-5 and report.max_output > 0.1
    # A spec that forgets one axis is not a symmetry, and the check says so.
    mlp = owner(spec, "block0", "fc1", "kernel", 1)
    broken = align.PermutationSpec(
        spec.sizes, {**spec.axes, mlp: spec.axes[mlp][1:]}, spec.notes, spec.stacks
    )
    bad = align.check(model.apply, broken, variables, IMAGES)
    assert not bad.invariant and bad.max_change > 1e-2 and "NOT invariant" in str(bad)


def test_vit_planted_permutations_are_recovered():
    """Activation matching recovers every permutation. Weight matching recovers the
    residual stream and the MLPs; on heads it can stop in a local optimum of its
    coordinate descent (the head and within-head permutations act on the same
    kernels: 7 of 8 seeds recover everything), so only those are asserted for it."""
    model, variables, spec = vit()
    b, expected = planted(spec, variables, 1)
    batches = [jnp.asarray(RNG.normal(size=(16, 8, 8, 3)), jnp.float32) for _ in range(2)]
    perms, _ = align.activation_matching(spec, model.apply, variables, b, batches)
    assert same(perms, expected)
    perms, _ = align.weight_matching(spec, variables, b)
    uncoupled = [owner(spec, "embed", "kernel", 3)]
    uncoupled += [owner(spec, f"block{i}", "fc1", "kernel", 1) for i in range(2)]
    assert same(perms, {k: expected[k] for k in uncoupled})


# ---- scanned transformer -----------------------------------------------------------
@functools.cache
def scanned():
    model = ScannedLM(depth=DEPTH)
    variables = random_variables(model, 0, TOKENS)
    return model, variables, align.spec_from_function(model.apply, variables, TOKENS)


@functools.cache
def twin():
    model = UnrolledLM(depth=DEPTH)
    variables = unroll(scanned()[1], DEPTH)
    return model, variables, align.spec_from_function(model.apply, variables, TOKENS)


def test_scanned_model_gets_one_permutation_per_layer():
    model, variables, spec = scanned()
    assert not spec.notes, spec.notes
    residual = owner(spec, "embed", "embedding", 1)
    assert residual not in spec.stacks  # the carry: one permutation for every layer
    per_layer = {
        owner(spec, "blocks", "fc1", "kernel", 2),
        owner(spec, "blocks", "attn", "query", "kernel", 2),
        owner(spec, "blocks", "attn", "query", "kernel", 3),
        owner(spec, "blocks", "attn", "value", "kernel", 3),
    }
    assert None not in per_layer and len(per_layer) == 4
    assert spec.stacks == {name: DEPTH for name in per_layer}
    assert len(spec.axes) == 5
    # The twin has the same symmetries, one set per block.
    assert len(twin()[2].axes) == 1 + 4 * DEPTH
    np.testing.assert_allclose(
        model.apply(variables, TOKENS), twin()[0].apply(twin()[1], TOKENS), atol=1e-5
    )
    report = align.check(model.apply, spec, variables, TOKENS)
    assert report.invariant, report


def _as_twin_perms(perms, spec, twin_spec):
    """Scanned permutations renamed to the twin's (layer i of `name` -> its block i)."""
    out = {}
    for name, p in perms.items():
        # A leaf outside the stack names a shared permutation in both models.
        ref = next(r for r in spec.axes[name] if (name in spec.stacks) == ("blocks" in r.path))
        for i in range(DEPTH) if name in spec.stacks else [None]:
            path = (
                ref.path
                if i is None
                else tuple(f"block{i}" if k == "blocks" else k for k in ref.path)
            )
            axis = ref.axis if i is None else ref.axis - (ref.stack < ref.axis)
            target = next(
                n
                for n, rs in twin_spec.axes.items()
                if any(r.path == path and r.axis == axis for r in rs)
            )
            out[target] = np.asarray(p if i is None else p[i])
    return out


def test_scanned_planted_permutations_are_recovered_like_the_twin():
    """Activation matching recovers every per-layer permutation; weight matching is
    asserted on the permutations not coupled to heads (see the ViT test) and, below,
    on a one-head model where it recovers everything, as its unscanned twin does."""
    model, variables, spec = scanned()
    b, expected = planted(spec, variables, 2)
    assert all(np.shape(expected[n]) == (DEPTH, spec.sizes[n]) for n in spec.stacks)
    aligned = align.apply_permutation(spec, expected, b)
    np.testing.assert_allclose(model.apply(aligned, TOKENS), model.apply(b, TOKENS), atol=1e-4)

    batches = [jnp.asarray(RNG.integers(0, 32, size=(16, 8)), jnp.int32)]
    perms, info = align.activation_matching(spec, model.apply, variables, b, batches)
    assert same(perms, expected)
    assert np.shape(info["stats"][next(iter(spec.stacks))][0]["mean_a"])[0] == DEPTH
    perms, _ = align.weight_matching(spec, variables, b)
    uncoupled = [owner(spec, "embed", "embedding", 1), owner(spec, "blocks", "fc1", "kernel", 2)]
    assert same(perms, {k: expected[k] for k in uncoupled})


@functools.cache
def one_head():
    model = ScannedLM(depth=DEPTH, heads=1)
    variables = random_variables(model, 1, TOKENS)
    return model, variables, align.spec_from_function(model.apply, variables, TOKENS)


def test_scanned_weight_matching_equals_the_twins():
    model, variables, spec = one_head()
    assert len(spec.stacks) == 3  # mlp, qk, vo per layer; a single head is not permuted
    tmodel = UnrolledLM(depth=DEPTH, heads=1)
    tspec = align.spec_from_function(tmodel.apply, unroll(variables, DEPTH), TOKENS)
    b, expected = planted(spec, variables, 3)
    perms, _ = align.weight_matching(spec, variables, b)
    assert same(perms, expected)
    twin_perms, _ = align.weight_matching(tspec, unroll(variables, DEPTH), unroll(b, DEPTH))
    converted = _as_twin_perms(perms, spec, tspec)
    assert converted.keys() == twin_perms.keys() and same(converted, twin_perms)


def test_ste_and_merge_many_take_stacked_permutations():
    model, variables, spec = one_head()
    b, expected = planted(spec, variables, 4, noise=0.0)

    def loss_fn(v, tokens):
        logits = model.apply(v, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    perms, info = align.ste(spec, variables, b, loss_fn, [TOKENS], optimizer=optax.adam(1e-4))
    assert info["steps"] == 1 and same(perms, expected)
    merged, perms, _ = align.merge_many(spec, [variables, b], key=jax.random.key(0))
    assert all(np.shape(perms[1][n]) == (DEPTH, spec.sizes[n]) for n in spec.stacks)
    np.testing.assert_allclose(
        model.apply(merged, TOKENS), model.apply(variables, TOKENS), atol=1e-4
    )


@pytest.mark.parametrize("depth", [24])
def test_tracing_time_does_not_grow_with_scanned_depth(depth):
    """The scan body is traced once: 24 layers cost about what one does."""

    def trace_time(d):
        model = ScannedLM(depth=d)
        shapes = jax.eval_shape(model.init, jax.random.key(0), TOKENS)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            spec = align.spec_from_function(model.apply, shapes, TOKENS)
            times.append(time.perf_counter() - t0)
        assert len(spec.axes) == 5 and len(spec.stacks) == (4 if d > 1 else 0)
        return min(times)

    one, deep = trace_time(1), trace_time(depth)
    print(f"tracing 1 layer: {one:.3f} s, {depth} layers: {deep:.3f} s")
    assert deep < 3 * one + 0.05
