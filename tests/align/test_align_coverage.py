"""Every primitive jax.numpy and flax.linen layers emit in common model code has a
rule: a zoo of layers traces with no unknown primitive, and its derived spec is a
symmetry of the function."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmc import align
from lmc.align.tracing.rules import RULES


def primitives(jaxpr, out: set) -> set:
    """Names of the primitives in a jaxpr and in every jaxpr nested in its params."""
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    primitives(inner, out)
    return out


@jax.custom_vjp
def clip_gradient(x):
    return x


clip_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -1, 1),))


class Zoo(nn.Module):
    @nn.compact
    def __call__(self, images, tokens, train=False):
        h = nn.Conv(8, (3, 3))(images)
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
        h = nn.Conv(8, (3, 3), feature_group_count=8)(h)  # depthwise
        h = nn.Conv(8, (3, 3), feature_group_count=2)(nn.GroupNorm(num_groups=2)(h))
        h = nn.Conv(8, (3, 3), strides=2)(h)
        h = nn.ConvTranspose(8, (2, 2), strides=(2, 2))(h)
        h = nn.avg_pool(nn.max_pool(h, (2, 2), (2, 2)), (2, 2), (2, 2))
        h = nn.Dropout(0.1, deterministic=True)(h)
        h = nn.Dense(16)(h.reshape(h.shape[0], -1))

        e = nn.Embed(32, 16)(tokens)
        cls = self.param("cls", nn.initializers.normal(), (1, 1, 16))
        e = jnp.concatenate([jnp.tile(cls, (e.shape[0], 1, 1)), e], axis=1)
        e = e + self.param("pos", nn.initializers.normal(), (1, e.shape[1], 16))
        e = nn.RMSNorm()(e)
        e = e + nn.MultiHeadDotProductAttention(2)(e, e)
        e = nn.LayerNorm()(e)
        e = nn.DenseGeneral(16, axis=(-2, -1))(nn.DenseGeneral((2, 8))(e))
        e = jnp.cumsum(e, axis=1) + jnp.flip(e, 1) + jnp.pad(e, ((0, 0), (1, 1), (0, 0)))[:, 1:-1]
        e = jnp.where(e > 0, jnp.clip(e, -3, 3), 0.1 * e)
        first = e[jnp.arange(e.shape[0]), jnp.argmax(e.sum(-1), axis=1)]  # gather
        e = e.at[:, 0].set(first + h)  # scatter
        e = jax.lax.dynamic_update_slice(e, e[:, :1] * 2, (0, 1, 0))
        e = jax.lax.dynamic_slice(e, (0, 0, 0), e.shape)
        e = jnp.expand_dims(e, 1).squeeze(1).astype(jnp.bfloat16).astype(jnp.float32)
        e = jax.lax.reduce_precision(e, 8, 7)
        e = nn.gelu(e) + jax.nn.softplus(e) + jnp.max(e, axis=1, keepdims=True)
        e = clip_gradient(jax.checkpoint(jnp.tanh)(e))  # custom_vjp, remat
        e = jax.jit(lambda z: z * 2)(e)
        e = jax.lax.cond(e.sum() > 0, lambda z: z, lambda z: -z, e)
        e = jax.lax.fori_loop(0, 2, lambda i, z: z * 0.5, e)  # scan
        e = jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, c[1] * 0.9), (0, e))[1]
        e, _ = jax.lax.scan(lambda c, _: (jnp.sin(c), None), e, None, length=2)
        left, right = jnp.split(e, 2, axis=1)
        e = jnp.concatenate([jnp.sort(left, axis=1), right], axis=1)
        return nn.Dense(10)(e.mean(1))


def _inputs():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 32, size=(2, 5)), jnp.int32)
    return images, tokens


def test_zoo_has_no_unknown_primitive_and_its_spec_is_a_symmetry():
    model, (images, tokens) = Zoo(), _inputs()
    shapes = jax.eval_shape(model.init, jax.random.key(0), images, tokens)
    seen: set = set()
    for train in (False, True):
        fn = lambda v, x, t, train=train: model.apply(  # noqa: E731
            v, x, t, train, mutable=["batch_stats"] if train else False
        )
        primitives(jax.make_jaxpr(fn)(shapes, images, tokens).jaxpr, seen)
    assert not seen - RULES.keys(), f"no rule for {sorted(seen - RULES.keys())}"
    for expected in ("tile", "scatter", "gather", "conv_general_dilated", "custom_vjp_call"):
        assert expected in seen
    assert {"scan", "while", "cond", "remat2"} <= seen

    apply = lambda v, x, t: model.apply(v, x, t, False)  # noqa: E731
    spec = align.spec_from_function(apply, shapes, images, tokens)
    assert not spec.notes, spec.notes
    assert len(spec.axes) >= 10
    # Grouped convolution: whole groups and a shared within-group order are permuted.
    assert any(r.inner == 4 for refs in spec.axes.values() for r in refs)
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    variables["batch_stats"] = jax.tree.map(lambda v: np.abs(v) + 0.5, variables["batch_stats"])
    report = align.check(apply, spec, variables, images, tokens)
    assert report.invariant and report.moved >= 8, report
    assert "model output" in report.unpermuted and "convolution window" in report.unpermuted
