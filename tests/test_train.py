import jax
import numpy as np
import pytest
from conftest import small_config

from lmc import data, models, spawn
from lmc.errors import UserError
from lmc.evaluate import evaluate
from lmc.train import DivergenceError, Seeds, train


def _setup(config):
    ds = data.load(config.data.name)
    model = models.from_config(config.model, ds.num_classes)
    return ds, model


def _assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _trees_differ(a, b):
    return any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_same_config_twice_is_bitwise_identical(tmp_path):
    c = small_config()
    ds, model = _setup(c)
    s1 = train(model=model, dataset=ds, config=c, run_dir=tmp_path / "a", seeds=Seeds(0, 0, 0))
    s2 = train(model=model, dataset=ds, config=c, run_dir=tmp_path / "b", seeds=Seeds(0, 0, 0))
    _assert_trees_equal(s1["params"], s2["params"])
    _assert_trees_equal(s1["opt_state"], s2["opt_state"])


def test_resume_after_checkpoint_is_bitwise_identical(tmp_path):
    c = small_config()
    c.checkpoint.every_steps = 10
    ds, model = _setup(c)
    full = train(model=model, dataset=ds, config=c, run_dir=tmp_path / "full", seeds=Seeds(0, 1, 2))
    # "Crash" after step 25: the newest checkpoint is step 20; the rerun resumes there.
    train(
        model=model,
        dataset=ds,
        config=c,
        run_dir=tmp_path / "cut",
        seeds=Seeds(0, 1, 2),
        stop_step=25,
    )
    steps = sorted(
        int(p.name) for p in (tmp_path / "cut" / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert 20 in steps
    import shutil

    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "25")
    resumed = train(
        model=model, dataset=ds, config=c, run_dir=tmp_path / "cut", seeds=Seeds(0, 1, 2)
    )
    _assert_trees_equal(full["params"], resumed["params"])
    _assert_trees_equal(full["opt_state"], resumed["opt_state"])
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    cut_log = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [line.split('"wall_s"')[0] for line in lines]
    assert strip(full_log) == strip(cut_log)


def test_children_same_seeds_identical_different_seeds_differ(tmp_path):
    c = small_config(**{"spawn.mode": "spawn", "spawn.step": 10, "spawn.child_seeds": (5, 5, 6)})
    ds, model = _setup(c)
    spawn.train_parent(c, tmp_path, model, ds, [10])
    kids = [spawn.train_child(c, tmp_path, model, ds, i, 10) for i in range(3)]
    _assert_trees_equal(kids[0]["params"], kids[1]["params"])
    assert _trees_differ(kids[0]["params"], kids[2]["params"])
    # Children start from the parent's step-10 state, optimizer and schedule included.
    parent = spawn.load_parent(c, tmp_path, model, ds, 10)
    assert int(parent["step"]) == 10
    assert int(kids[0]["step"]) == c.num_steps


def test_spawn_from_parent_equals_uninterrupted_training_with_same_seeds(tmp_path):
    # A child whose seeds equal the parent's continues the parent's exact trajectory.
    c = small_config(**{"spawn.mode": "spawn", "spawn.step": 15, "spawn.child_seeds": (0,)})
    ds, model = _setup(c)
    spawn.train_parent(c, tmp_path, model, ds, [15])
    child = spawn.train_child(c, tmp_path, model, ds, 0, 15)
    straight = train(
        model=model, dataset=ds, config=c, run_dir=tmp_path / "straight", seeds=Seeds(0, 0, 0)
    )
    _assert_trees_equal(child["params"], straight["params"])


def test_independent_children_have_different_inits(tmp_path):
    c = small_config(num_steps=5)
    ds, model = _setup(c)
    a, b = spawn.make_siblings(c, tmp_path, model, ds)
    assert _trees_differ(a["params"], b["params"])


def test_spawn_step_out_of_range_errors_before_training(tmp_path):
    c = small_config(**{"spawn.mode": "spawn", "spawn.step": 40})
    ds, model = _setup(c)
    with pytest.raises(UserError, match="spawn step 40"):
        spawn.make_siblings(c, tmp_path, model, ds)
    assert not (tmp_path / "parent").exists()


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    c = small_config()
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 1e6
    c.checkpoint.every_steps = 1
    ds, model = _setup(c)
    with pytest.raises(DivergenceError, match="at step"):
        train(model=model, dataset=ds, config=c, run_dir=tmp_path, seeds=Seeds(0, 0, 0))
    from lmc.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path / "checkpoints", every_steps=1, read_only=True)
    _, state = ckpt.restore_latest()
    ckpt.close()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.slow
def test_default_digits_mlp_reaches_95_percent(tmp_path):
    from configs import default

    c = default.get_config()
    c.progress = False
    c.mesh.data = 1
    ds, model = _setup(c)
    state = train(model=model, dataset=ds, config=c, run_dir=tmp_path, seeds=Seeds(1, 1, 1))
    endpoint = {"params": state["params"], "model_state": state["model_state"]}
    test = evaluate(model.apply, endpoint, {"test": (ds.test_x, ds.test_y)})
    assert test["test_error"] <= 0.05, test


def test_population_training_matches_sequential_children(tmp_path):
    c = small_config(**{"spawn.mode": "spawn", "spawn.step": 10, "spawn.child_seeds": (1, 2, 3)})
    ds, model = _setup(c)
    spawn.train_parent(c, tmp_path / "seq", model, ds, [10])
    sequential = [spawn.train_child(c, tmp_path / "seq", model, ds, i, 10) for i in range(3)]
    c.spawn.population = True
    together = spawn.make_siblings(c, tmp_path / "pop", model, ds, num_children=3)
    assert (tmp_path / "pop" / "population" / "checkpoints").is_dir()
    for a, b in zip(sequential, together, strict=True):
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
            a["params"],
            b["params"],
        )
    assert _trees_differ(together[0]["params"], together[1]["params"])
