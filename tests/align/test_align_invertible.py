"""General invertible per-head maps (issue 25): the GL(d_h) classes of attention, found
by the numeric symmetry test; learned matching, one-sided and dual, over them; the
low-rank capacity control; early stopping on held-out batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_align_transformer import lm

from lmc import align
from lmc.align.continuous import invertible, learned, lowrank, orthogonal


def classes_of(positions):
    fn, params, tokens = lm(positions)
    plain = align.spec_from_function(fn, params, tokens)
    spec = align.spec_from_function(fn, params, tokens, nested=True)
    roles = orthogonal.roles(fn, plain, params, tokens)
    found = invertible.invertible_classes(fn, spec, params, tokens, exclude=(roles.residual,))
    return fn, params, tokens, spec, roles, found


def by_hand(params, block, m_qk, n_vo):
    """Per-head maps written out on the attention leaves (an independent computation):
    q -> q M, k -> k M^-T per head; v -> v N, W_o -> N^-1 W_o per head."""
    p = jax.tree.map(np.asarray, params)
    attn = {k: dict(v) for k, v in p[block]["attn"].items()}
    inv_t = np.linalg.inv(m_qk).transpose(0, 2, 1)
    for name, m in (("query", m_qk), ("key", inv_t), ("value", n_vo)):
        attn[name]["kernel"] = np.einsum("dhi,hij->dhj", attn[name]["kernel"], m)
        attn[name]["bias"] = np.einsum("hi,hij->hj", attn[name]["bias"], m)
    attn["out"]["kernel"] = np.einsum("hij,hjd->hid", np.linalg.inv(n_vo), attn["out"]["kernel"])
    return {**p, block: {**p[block], "attn": attn}}


@pytest.mark.parametrize("positions", ("learned", "rotary"))
def test_invertible_classes_are_the_two_sides_of_each_head(positions):
    """Learned positions: per layer one Q/K class (query and key on opposite sides) and
    one V/O class (value and output on opposite sides); rotary: V/O only. A random
    ill-conditioned element, written out by hand, leaves the logits unchanged."""
    fn, params, tokens, spec, _, found = classes_of(positions)
    assert len(found) == (4 if positions == "learned" else 2)
    for c in found:
        modules = {p[-2] for r in spec.axes[c.name] for p in [r.path]}
        contra = {p[-2] for p in c.contra}
        pair = {"query", "key"} if "key" in modules else {"value", "out"}
        assert modules == pair and len(contra) == 1 and contra < pair, c
    rng = np.random.default_rng(2)
    m = invertible.random_invertible((4, 8, 8), rng)
    n = invertible.random_invertible((4, 8, 8), rng)
    assert np.linalg.cond(m).max() > 2  # far from orthogonal
    if positions == "rotary":
        m = np.broadcast_to(np.eye(8), (4, 8, 8))
    want = np.asarray(fn(params, tokens))
    got = np.asarray(fn(by_hand(params, "block1", m, n), tokens))
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()
    # the same maps with W_o not inverted are no symmetry: the test can fail
    wrong = by_hand(params, "block1", m, n)
    wrong["block1"]["attn"]["out"]["kernel"] = np.einsum(
        "hij,hjd->hid", n, params["block1"]["attn"]["out"]["kernel"]
    )
    assert np.abs(np.asarray(fn(wrong, tokens)) - want).max() > 0.1


def planted(seed=4, scale=0.5):
    """A and B = A under planted invertible per-head maps exp(X), X a general (not
    skew) generator: condition numbers about 2-3, near the identity as after
    weight matching."""
    fn, params, tokens, spec, roles, found = classes_of("learned")
    rng = np.random.default_rng(seed)
    maps = {c.name: np.asarray(invertible.expm(jnp.asarray(
        scale * rng.normal(size=spec.shape(c.name) + (8,)) / np.sqrt(8), jnp.float32)))
        for c in found}  # fmt: skip
    other = jax.tree.map(np.asarray, invertible.apply_invertible(spec, found, maps, params))
    want = np.asarray(fn(params, tokens))
    assert np.abs(np.asarray(fn(other, tokens)) - want).max() < 1e-3 * np.abs(want).max()

    def loss(p, batch):
        return jnp.mean((fn(p, batch) - want) ** 2)

    def midpoint(b):
        return float(loss(jax.tree.map(lambda x, y: (x + y) / 2, params, b), tokens))

    return fn, params, other, tokens, spec, roles, found, loss, midpoint


@pytest.mark.parametrize("dual", (False, True))
def test_learned_matching_recovers_planted_invertible_maps(dual):
    """Planted GL maps are undone by learned matching over the invertible classes (one-
    sided or dual) to a small midpoint loss; B's function is kept. Orthogonal maps,
    the old class, cannot undo them as well in the same steps."""
    fn, params, other, tokens, spec, roles, found, loss, midpoint = planted()
    run = dict(steps=100, learning_rate=3e-2)
    aligned, info = learned.learned_matching(
        spec, None, found, params, other, loss, (tokens for _ in range(100)), dual=dual, **run
    )
    want_b = np.asarray(fn(other, tokens))
    assert np.abs(np.asarray(fn(aligned, tokens)) - want_b).max() < 1e-2 * np.abs(want_b).max()
    assert info["free_parameters"] == 4 * 4 * 64 * (2 if dual else 1)
    before, after = midpoint(other), midpoint(aligned)
    assert after < 0.05 * before, (before, after)  # measured: 0.226 -> 0.0010 (one-sided)
    if not dual:
        names = [c.name for c in found]
        ortho, _ = learned.learned_matching(
            spec, None, names, params, other, loss, (tokens for _ in range(100)), **run
        )
        assert after < 0.3 * midpoint(ortho), (after, midpoint(ortho))  # measured 0.012


def test_early_stopping_keeps_the_best_held_out_theta():
    """Training batches pull theta to 5, the held-out batch wants 0: the held-out path
    loss is lowest at step 0, so `fit` returns the start, not the last iterate."""

    def path_loss(theta, batch, a):
        return (theta["x"] - batch) ** 2 * (1 + a)

    theta0 = {"x": jnp.zeros(())}
    run = dict(steps=30, learning_rate=0.3, alphas=np.full(30, 0.5), eval_every=10)
    last, info = learned.fit(path_loss, theta0, iter([5.0] * 30), **run)
    assert float(last["x"]) > 1 and "best_step" not in info
    best, info = learned.fit(path_loss, theta0, iter([5.0] * 30), holdout=[0.0], **run)
    assert info["best_step"] == 0 and float(best["x"]) == 0.0
    assert [s for s, _ in info["holdout_losses"]] == [0, 10, 20, 30]


def test_lowrank_control_starts_at_b_and_fits_the_path_with_its_budget():
    """The control's factors: rank from the budget (sum of rows + cols per matrix);
    zero steps leave B exactly; training lowers the path loss by changing B."""
    rng = np.random.default_rng(0)
    shapes = {"w1": (6, 2, 4), "w2": (8, 3), "b": (3,)}
    a, b = ({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
            for _ in range(2))  # fmt: skip
    x = rng.normal(size=(16, 6)).astype(np.float32)

    def fn(p, x):
        return jnp.tanh(x @ p["w1"].reshape(6, 8)) @ p["w2"] + p["b"]

    target = np.asarray(fn(a, x))

    def loss(p, batch):
        return jnp.mean((fn(p, batch) - target) ** 2)

    # (6, 2, 4) viewed as (6, 8); (8, 3) as is: 14 + 11 numbers per rank
    assert lowrank.square_split((6, 2, 4)) == (6, 8)
    assert lowrank.rank_for(b, budget=50) == 2
    same, info = lowrank.lowrank_control(a, b, loss, iter([x] * 0), rank=2, steps=0)
    assert all(np.array_equal(same[k], b[k]) for k in shapes)
    assert info["free_parameters"] == 50
    fitted, info = lowrank.lowrank_control(a, b, loss, iter([x] * 200), rank=2, steps=200,
                                           learning_rate=3e-2)  # fmt: skip

    def mid(p):
        return float(loss(jax.tree.map(lambda u, v: (u + v) / 2, a, p), x))

    assert mid(fitted) < 0.7 * mid(b), (mid(b), mid(fitted))
    assert np.abs(np.asarray(fn(fitted, x)) - np.asarray(fn(b, x))).max() > 1e-2  # no symmetry


def test_data_budget_counts_bytes_against_one_models_training():
    from configs.lm_rebasin import get_config
    from lmc.experiments.common.methods import data_budget

    class Data:
        train_x = np.zeros((4, 64), np.int32)

    got = data_budget(get_config(), Data(), batch=16, batches=1004)
    assert got == {"batches": 1004, "batch": 16, "context": 64, "tokens": 1004 * 16 * 64,
                   "of_training": round(1004 / 1600, 4)}  # fmt: skip


def test_rotary_query_key_class_is_a_scale_and_rotation_per_pair():
    """Rotary positions: the candidate over the query/key within-head axes is kept with
    the model's pairing (i, i + d_h/2); a per-pair s R(theta) written out by hand
    (q -> q M, k -> k M^-T per head) leaves the logits unchanged, a general invertible
    M does not; and learned matching over these classes undoes planted ones."""
    from lmc.align.continuous import rotary

    fn, params, tokens = lm("rotary")
    spec = align.spec_from_function(fn, params, tokens, nested=True)
    extended, found = rotary.rotary_classes(fn, spec, params, tokens)
    assert [(c.pairing, len(c.contra)) for c in found] == [("half", 2)] * 2
    rng = np.random.default_rng(3)
    s, t = np.exp(rng.uniform(-1, 1, (4, 4))), rng.uniform(-np.pi, np.pi, (4, 4))
    m = np.zeros((4, 8, 8))
    for h, k in np.ndindex(4, 4):  # the 2x2 block of pair (k, k + 4): rotary's form
        block = s[h, k] * np.array([[np.cos(t[h, k]), np.sin(t[h, k])],
                                    [-np.sin(t[h, k]), np.cos(t[h, k])]])  # fmt: skip
        m[h][np.ix_([k, k + 4], [k, k + 4])] = block
    want = np.asarray(fn(params, tokens))
    eye = np.broadcast_to(np.eye(8), (4, 8, 8))
    got = np.asarray(fn(by_hand(params, "block0", m, eye), tokens))
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()
    general = invertible.random_invertible((4, 8, 8), rng)
    assert (
        np.abs(np.asarray(fn(by_hand(params, "block0", general, eye), tokens)) - want).max() > 0.1
    )
    # planted: B = A under per-pair maps; learned matching brings the midpoint back
    g = {c.name: jnp.asarray(0.3 * rng.normal(size=(4, 4, 2)), jnp.float32) for c in found}
    other = jax.tree.map(np.asarray, invertible.apply_pairs(
        extended, found, rotary.block_pairs(g, found), params))  # fmt: skip
    assert np.abs(np.asarray(fn(other, tokens)) - want).max() < 1e-3 * np.abs(want).max()

    def loss(p, batch):
        return jnp.mean((fn(p, batch) - want) ** 2)

    def midpoint(b):
        return float(loss(jax.tree.map(lambda x, y: (x + y) / 2, params, b), tokens))

    # with the value/output classes beside them, as the recipe learns them
    both = found + invertible.invertible_classes(fn, spec, params, tokens)
    assert len(both) == 4
    aligned, info = learned.learned_matching(extended, None, both, params, other, loss,
                                             (tokens for _ in range(60)), steps=60,
                                             learning_rate=3e-2)  # fmt: skip
    assert info["free_parameters"] == 2 * 4 * 8 + 2 * 4 * 64
    assert midpoint(aligned) < 0.05 * midpoint(other), (midpoint(other), midpoint(aligned))
