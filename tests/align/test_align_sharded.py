"""Weight matching on params sharded over a device mesh finds the permutations it finds
on host arrays (issue 21: pods hold params sharded; alignment gathers per leaf).

The conftest gives 8 fake CPU devices; the params are sharded over 4 of them along
their unit axes, the way a tensor-parallel model holds them.
"""

import importlib

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lmc import align

# The module (lmc.align exports a function of the same name).
wm_module = importlib.import_module("lmc.align.discrete.weight_matching")


def mlp(params, x):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    h = jax.nn.relu(h @ params["w2"] + params["b2"])
    return h @ params["w3"]


def _trees():
    rng = np.random.default_rng(0)
    make = lambda: {  # noqa: E731
        "w1": rng.normal(size=(16, 64)).astype(np.float32),
        "b1": rng.normal(size=64).astype(np.float32),
        "w2": rng.normal(size=(64, 64)).astype(np.float32),
        "b2": rng.normal(size=64).astype(np.float32),
        "w3": rng.normal(size=(64, 8)).astype(np.float32),
    }
    return make(), make()


def _shard(tree, mesh):
    # Each leaf split along its last axis of size 64 over the 4 devices ("model" axis).
    def put(x):
        axes = [None] * x.ndim
        axes[max(i for i, d in enumerate(x.shape) if d == 64)] = "model"
        return jax.device_put(x, NamedSharding(mesh, P(*axes)))

    return jax.tree.map(put, tree)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_sharded_params_give_the_same_permutations_as_host_arrays(monkeypatch, backend):
    assert len(jax.devices()) >= 4
    mesh = jax.make_mesh((4,), ("model",), devices=jax.devices()[:4])
    a, b = _trees()
    spec = align.spec_from_function(mlp, a, np.zeros((2, 16), np.float32))
    want, info = align.weight_matching(spec, a, b, key=jax.random.key(3))
    sa, sb = _shard(a, mesh), _shard(b, mesh)
    assert len(sa["w2"].sharding.device_set) == 4
    monkeypatch.setattr(wm_module, "BACKEND", backend)
    monkeypatch.setattr(wm_module, "JIT_MIN_MACS", 0)  # every product on the JAX path
    got, got_info = align.weight_matching(spec, sa, sb, key=jax.random.key(3))
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    assert got_info["objective"][-1] == pytest.approx(info["objective"][-1], rel=1e-5)
    # Independent anchor: J of the result recomputed from the aligned trees by hand.
    aligned = align.apply_permutation(spec, got, b)
    j = sum(float(np.vdot(np.float64(a[k]), np.float64(aligned[k]))) for k in a)
    assert got_info["objective"][-1] == pytest.approx(j, rel=1e-4)
