"""Data-parallel and FSDP training on 8 fake CPU devices equals 1-device training."""

import jax
import ml_collections
import numpy as np
import pytest
from helpers import small_config

from lmc import data, evaluate, models, training
from lmc.errors import UserError
from lmc.runtime import sharding
from lmc.training import Seeds, train

# The bound of docs/reference/guarantees.md: 40 SGD steps of the small MLP on 8 fake devices (or a 4x2
# data x FSDP mesh, or 8 devices then resumed on 1) end with every parameter within
# 5e-7 of single-device training. Measured on the development machine: 1.8e-7 (data
# parallel), 0.9e-7 (FSDP), 1.5e-7 (resume), with parameters up to 0.8 in size: a few
# float32 ulps of summation-order noise amplified by training. The bound is absolute
# (rtol 0) because near-zero parameters make any relative bound meaningless.
PARAM_ATOL = 5e-7
# Curves and barriers are means of O(1) losses over the same examples: float32
# summation order moves them by a few 1e-8 (measured 3e-8); 1e-6 is ~8 ulps of 1.0.
CURVE_ATOL = 1e-6


def _with_mesh(config, **mesh):
    config.mesh = ml_collections.ConfigDict(mesh) if mesh else None
    return config


def _setup(config):
    ds = data.load(config.data.name)
    return ds, models.from_config(config.model, ds.num_classes)


def _assert_close(a, b, atol=PARAM_ATOL):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol),
        a,
        b,
    )


def test_eight_devices_by_default():
    assert jax.device_count() == 8  # conftest's fake devices
    mesh = sharding.mesh_from_config(_with_mesh(small_config()))  # no config.mesh: all devices
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1}


def test_data_parallel_equals_single_device_params_curves_barriers(tmp_path):
    ds, model = _setup(small_config())
    ends = {}
    for n in (1, 8):
        c = _with_mesh(small_config(), data=n)
        ends[n] = training.siblings(c, tmp_path / f"mesh{n}", model, ds, (0, 1))
        # Public behaviour: the final state comes back on one local device.
        leaf = jax.tree.leaves(ends[n][0]["params"])[0]
        assert leaf.sharding.device_set == {jax.local_devices()[0]}
    for a, b in zip(ends[1], ends[8], strict=True):
        _assert_close(a, b)
    curves = {
        n: evaluate.method_entry(evaluate.interpolation_curve(
            model.apply, *ends[n], ds, alphas=5, batch_size=128, train_subset=256))
        for n in (1, 8)
    }  # fmt: skip
    for key in ("train_loss", "test_loss", "train_error", "test_error"):
        np.testing.assert_allclose(
            curves[1]["curves"][key], curves[8]["curves"][key], rtol=0, atol=CURVE_ATOL
        )
        np.testing.assert_allclose(
            curves[1]["barrier"][key], curves[8]["barrier"][key], rtol=0, atol=CURVE_ATOL
        )


def test_fsdp_shards_large_arrays_and_trains_like_one_device(tmp_path):
    c1 = _with_mesh(small_config(), data=1)
    c_fsdp = _with_mesh(small_config(), data=4, fsdp=2, fsdp_min_size=256)
    ds, model = _setup(c1)
    params, _ = model.init(jax.random.key(0), ds.train_x[:1])
    mesh = sharding.mesh_from_config(c_fsdp)
    specs = jax.tree.map(lambda s: s.spec, sharding.state_shardings(params, mesh, 256))
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(specs)}
    assert any("fsdp" in str(s) for s in flat.values()), flat
    assert all(s == jax.sharding.PartitionSpec() for k, s in flat.items() if "bias" in k)
    a = train(model=model, dataset=ds, config=c1, run_dir=tmp_path / "a", seeds=Seeds(0, 1, 2))
    b = train(model=model, dataset=ds, config=c_fsdp, run_dir=tmp_path / "b", seeds=Seeds(0, 1, 2))
    _assert_close(a["params"], b["params"])
    _assert_close(a["opt_state"], b["opt_state"])


def test_checkpoint_from_eight_devices_resumes_on_one(tmp_path):
    c8, c1 = _with_mesh(small_config(), data=8), _with_mesh(small_config(), data=1)
    c8.checkpoint.every_steps = c1.checkpoint.every_steps = 10
    ds, model = _setup(c8)
    full = train(
        model=model, dataset=ds, config=c1, run_dir=tmp_path / "full", seeds=Seeds(0, 0, 0)
    )
    train(model=model, dataset=ds, config=c8, run_dir=tmp_path / "cut", seeds=Seeds(0, 0, 0),
          stop_step=20)  # fmt: skip
    resumed = train(model=model, dataset=ds, config=c1, run_dir=tmp_path / "cut",
                    seeds=Seeds(0, 0, 0))  # fmt: skip
    _assert_close(full["params"], resumed["params"])


def test_shard_host_batch_splits_rows_over_the_mesh():
    mesh = sharding.make_mesh()
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    (gx,) = sharding.shard_host_batch((x,), mesh)
    assert gx.sharding == sharding.batch_sharding(mesh)
    assert len({s.device for s in gx.addressable_shards}) == 8
    np.testing.assert_array_equal(np.asarray(gx), x)
    assert sharding.process_slot(mesh, 16) == (0, 1)
    assert sharding.round_batch(1000, mesh) == 1000 and sharding.round_batch(1001, mesh) == 1008
    tree = sharding.replicate({"w": np.ones((2, 2))}, mesh)
    assert tree["w"].sharding.is_fully_replicated and len(tree["w"].devices()) == 8


@pytest.mark.parametrize(
    "mesh, batch_size, message",
    [
        ({}, 36, "config.batch_size=36 is not divisible by the 8 devices"),
        ({"data": 16}, 32, "16 devices, but 8 are available"),
        ({"fsdp": 3}, 32, "config.mesh.fsdp=3 must be a positive divisor of the 8 devices"),
        ({"model": 2}, 32, "unknown config.mesh keys"),
    ],
)
def test_bad_mesh_or_batch_is_a_user_error_before_training(tmp_path, mesh, batch_size, message):
    c = _with_mesh(small_config(batch_size=batch_size), **mesh)
    ds, model = _setup(c)
    with pytest.raises(UserError, match=message):
        train(model=model, dataset=ds, config=c, run_dir=tmp_path, seeds=Seeds(0, 0, 0))
    assert not (tmp_path / "checkpoints").exists()
