import jax
import numpy as np
import pytest
from helpers import small_config

from lmc import data, models, training
from lmc.errors import UserError
from lmc.training import Child, DivergenceError, Seeds, train


def _setup(config):
    ds = data.load(config.data.name)
    model = models.from_config(config.model, ds.num_classes)
    return ds, model


def _assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _children(c, workdir, model, ds, indices, k):
    """Final endpoints of children `indices` spawned at step k (parent trained first)."""
    training.train_parent(c, workdir, model, ds, [k])
    kids = [Child(i, workdir / f"child_{i}", k) for i in indices]
    return training.train_children(c, workdir, model, ds, kids)


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
    kids = _children(c, tmp_path, model, ds, range(3), 10)
    _assert_trees_equal(kids[0]["params"], kids[1]["params"])
    assert _trees_differ(kids[0]["params"], kids[2]["params"])
    # Children start from the parent's step-10 state, optimizer and schedule included.
    parent = training.load_parent(c, tmp_path, model, ds, 10)
    assert int(parent["step"]) == 10
    assert sorted(int(p.name) for p in (tmp_path / "child_0" / "checkpoints").iterdir()
                  if p.name.isdigit())[-1] == c.num_steps  # fmt: skip


def test_spawn_from_parent_equals_uninterrupted_training_with_same_seeds(tmp_path):
    # A child whose seeds equal the parent's continues the parent's exact trajectory.
    c = small_config(**{"spawn.mode": "spawn", "spawn.step": 15, "spawn.child_seeds": (0,)})
    ds, model = _setup(c)
    (child,) = _children(c, tmp_path, model, ds, [0], 15)
    straight = train(
        model=model, dataset=ds, config=c, run_dir=tmp_path / "straight", seeds=Seeds(0, 0, 0)
    )
    _assert_trees_equal(child["params"], straight["params"])


def test_independent_children_have_different_inits(tmp_path):
    c = small_config(num_steps=5)
    ds, model = _setup(c)
    a, b = training.siblings(c, tmp_path, model, ds, (0, 1))
    assert _trees_differ(a["params"], b["params"])


def test_spawn_step_out_of_range_errors_before_training(tmp_path):
    c = small_config(**{"spawn.mode": "spawn", "spawn.step": 40})
    ds, model = _setup(c)
    with pytest.raises(UserError, match="spawn step 40"):
        training.validate_spawn(c, ds, [c.spawn.step])
    assert not (tmp_path / "parent").exists()


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    c = small_config()
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 1e6
    c.checkpoint.every_steps = 1
    ds, model = _setup(c)
    with pytest.raises(DivergenceError, match="at step"):
        train(model=model, dataset=ds, config=c, run_dir=tmp_path, seeds=Seeds(0, 0, 0))
    from lmc.runtime.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path / "checkpoints", every_steps=1, read_only=True)
    _, state = ckpt.restore_latest()
    ckpt.close()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_population_training_is_bitwise_identical_to_sequential_children(tmp_path):
    # docs/reference/guarantees.md: "on one device the result is bitwise identical to training them one after
    # another". vmap over the same step and the same batches: no tolerance.
    c = small_config(**{"spawn.mode": "spawn", "spawn.step": 10, "spawn.child_seeds": (1, 2, 3)})
    c.eval_every_steps = 15
    ds, model = _setup(c)
    sequential = _children(c, tmp_path / "seq", model, ds, range(3), 10)
    c.spawn.population = True
    together = training.siblings(c, tmp_path / "pop", model, ds, range(3))
    assert list((tmp_path / "pop").glob("population_*/checkpoints"))
    for a, b in zip(sequential, together, strict=True):
        _assert_trees_equal(a, b)
    assert _trees_differ(together[0]["params"], together[1]["params"])
    # One metrics.jsonl per child, with the train-time evaluations of eval_every_steps.
    for i in range(3):
        seq = (tmp_path / "seq" / f"child_{i}" / "metrics.jsonl").read_text().splitlines()
        pop = (tmp_path / "pop" / f"child_{i}" / "metrics.jsonl").read_text().splitlines()
        strip = lambda lines: [line.split('"wall_s"')[0] for line in lines]
        assert strip(seq) == strip(pop)
        assert sum('"test_loss"' in line for line in pop) == 3  # steps 15, 30 and the end (40)


def test_population_sigterm_checkpoints_exits_75_and_resumes_bitwise(tmp_path):
    """SIGTERM during population training: checkpoint + exit 75; the rerun finishes
    bitwise identical to an uninterrupted run (results.json, params, metrics)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT, tiny_flags

    overrides = tiny_flags(**{
        "num_steps": 300, "eval.num_alphas": 3, "eval.train_subset": 128,
        "eval.methods": ("naive",), "spawn.population": True, "spawn.child_seeds": (1, 2),
        "log_every_steps": 10,
    })  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(workdir, **kw):
        cmd = [sys.executable, "-m", "lmc.cli", "run", f"--workdir={workdir}", *overrides]
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True, **kw)

    full = run(tmp_path / "full")
    assert full.wait(300) == 0, full.stderr.read()
    cut = run(tmp_path / "cut")
    metrics = tmp_path / "cut" / "child_0" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and cut.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break  # training is under way (step >= 30 of 300)
        time.sleep(0.05)
    cut.send_signal(signal.SIGTERM)
    rc, err = cut.wait(120), cut.stderr.read()
    assert rc == 75, err
    assert "preempted" in err
    assert not (tmp_path / "cut" / "results.json").exists()
    stacked = next((tmp_path / "cut").glob("population_*/checkpoints"))
    saved = [int(p.name) for p in stacked.iterdir() if p.name.isdigit()]
    assert saved and 0 < max(saved) < 300  # the preemption checkpoint
    resumed = run(tmp_path / "cut")
    rc, err = resumed.wait(300), resumed.stderr.read()
    assert rc == 0, err
    assert "resuming from step" in err

    def strip(results):
        results["provenance"].pop("wall_s"), results["provenance"].pop("config_file", None)
        return results

    a = strip(json.loads((tmp_path / "full" / "results.json").read_text()))
    b = strip(json.loads((tmp_path / "cut" / "results.json").read_text()))
    assert a == b
    for i in range(2):
        f = (tmp_path / "full" / f"child_{i}" / "metrics.jsonl").read_text().splitlines()
        g = (tmp_path / "cut" / f"child_{i}" / "metrics.jsonl").read_text().splitlines()
        assert [line.split('"wall_s"')[0] for line in f] == [
            line.split('"wall_s"')[0] for line in g
        ]
