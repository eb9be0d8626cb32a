"""Which inputs the engine hands to training: each test computes them independently.

The train loop, the optimizer and the evaluator have their own tests; here they are
trusted, and what is checked is the choice the experiments make before calling them
(a correct kernel fed the wrong checkpoint, seed or corpus gives plausible numbers):

- the parent checkpoint a child starts from: its own spawn step k, not the parent's
  last kept one (an instability run with k = 0 and k = 20; the k = 0 child must equal
  a run from a fresh init that never saw the parent's checkpoints);
- a child's seeds: spawned, init = config.seed and data = aug = child_seeds[i];
  independent, all three = child_seeds[i];
- which children form pair j at a spawn step (children 2j and 2j+1);
- which dataset each member of a vmapped population reads (its own);
- in code_vs_prose, which corpus each child reads (the prose child: prose only, the
  code child: code only), the init and data seeds they get, and which network is
  `parent_at_k` (tests/data/test_engine_inputs_text.py).

References are built from `training.train` with a fresh init or a `start_state` the
test computes itself, never from `load_parent` / `train_children`, so a wrong choice
there does not cancel out.
"""

import jax
import numpy as np
from helpers import final_checkpoint, small_config

from lmc import data, evaluate, models, training
from lmc.experiments import run_experiment
from lmc.training import Seeds, train


def _assert_close(a, b):
    """Equal up to float reassociation: a vmapped population of 4 is not always bitwise
    equal to single runs on XLA:CPU (1e-7 measured). A wrong checkpoint, seed or corpus
    moves the weights by 1e-2 or more."""
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-5),
        a,
        b,
    )


def _differ(a, b) -> bool:
    return any(
        not np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_instability_children_start_at_their_own_spawn_step_with_their_own_seeds(tmp_path):
    # Two spawn steps, so the parent's last kept checkpoint (20) differs from k = 0; two
    # pairs, so a pair built from the wrong children (or pair 1 reusing pair 0's seeds)
    # shows. Population mode: the children of each k train as one vmapped population
    # (the sequential path is pinned against a fresh init in test_train.py).
    seeds = (11, 12, 13, 14)
    c = small_config(
        experiment="instability",
        **{"spawn.mode": "spawn", "spawn.child_seeds": seeds, "spawn.population": True,
           "instability.spawn_steps": (0, 20), "instability.num_pairs": 2,
           "eval.methods": ("naive",), "eval.num_alphas": 3},
    )  # fmt: skip
    results = run_experiment(c, tmp_path / "run")
    ds = data.load(c.data.name)
    model = models.from_config(c.model, ds.num_classes)

    def child(k, i):
        return final_checkpoint(tmp_path / "run" / f"k{k}" / f"child_{i}")

    # k = 0: the parent has trained nothing yet, so child 0 is a plain run from the
    # parent's init seed with the child's data seed, from a fresh init.
    fresh = train(model=model, dataset=ds, config=c, run_dir=tmp_path / "fresh",
                  seeds=Seeds(c.seed, seeds[0], seeds[0]))  # fmt: skip
    _assert_close(child(0, 0)["params"], fresh["params"])
    assert int(child(0, 0)["step"]) == c.num_steps

    # k = 20: the parent trained here to step 20 with its own seeds, then child 3's seeds.
    parent_20 = train(model=model, dataset=ds, config=c, run_dir=tmp_path / "parent20",
                      seeds=Seeds(c.seed, c.seed, c.seed), stop_step=20)  # fmt: skip
    parent_20 = jax.device_get(parent_20)  # host copies: a train step donates its input
    assert int(parent_20["step"]) == 20
    kid = train(model=model, dataset=ds, config=c, run_dir=tmp_path / "kid",
                seeds=Seeds(c.seed, seeds[3], seeds[3]), start_state=parent_20)  # fmt: skip
    _assert_close(child(20, 3)["params"], kid["params"])
    assert _differ(child(0, 3)["params"], child(20, 3)["params"])

    # Pair j at spawn step k is children (2j, 2j+1): pair 1 at k = 20 is children 2 and 3.
    kw = dict(alphas=c.eval.num_alphas, batch_size=c.eval.batch_size,
              train_subset=c.eval.train_subset)  # fmt: skip

    def entry(k, i, j):
        a, b = (training.endpoint(child(k, n)) for n in (i, j))
        e = evaluate.method_entry(evaluate.interpolation_curve(model.apply, a, b, ds, **kw))
        return {key: e[key] for key in ("barrier", "barrier_vs_mean")}

    for k, point in zip((0, 20), results["points"], strict=True):
        assert point["spawn_step"] == k
        for j, pair in enumerate(point["pairs"]):
            assert pair["naive"] == entry(k, 2 * j, 2 * j + 1), (k, j)
    # These children are linearly connected, so `barrier` is 0 for every pair; the
    # unclipped barrier_vs_mean tells other pairings apart.
    assert entry(20, 1, 2) != entry(20, 2, 3)


def test_spawned_children_take_data_seed_from_child_seeds_and_init_from_config_seed(tmp_path):
    # Sequential path, one spawn step that is not 0 nor the last step: each child is the
    # parent's step-k state continued with (config.seed, child_seeds[i]) seeds.
    c = small_config(**{"spawn.mode": "spawn", "spawn.step": 10, "spawn.child_seeds": (7, 8),
                        "num_steps": 25, "seed": 3})  # fmt: skip
    ds = data.load(c.data.name)
    model = models.from_config(c.model, ds.num_classes)
    a, b = training.siblings(c, tmp_path / "run", model, ds, (0, 1))
    parent_10 = train(model=model, dataset=ds, config=c, run_dir=tmp_path / "p",
                      seeds=Seeds(3, 3, 3), stop_step=10)  # fmt: skip
    parent_10 = jax.device_get(parent_10)  # host copies: a train step donates its input
    for got, s in ((a, 7), (b, 8)):
        ref = train(model=model, dataset=ds, config=c, run_dir=tmp_path / f"ref{s}",
                    seeds=Seeds(3, s, s), start_state=parent_10)  # fmt: skip
        _assert_close(got["params"], ref["params"])


def test_independent_children_take_every_seed_from_child_seeds(tmp_path):
    c = small_config(**{"spawn.child_seeds": (5, 9), "num_steps": 10, "seed": 4})
    ds = data.load(c.data.name)
    model = models.from_config(c.model, ds.num_classes)
    _, b = training.siblings(c, tmp_path / "run", model, ds, (0, 1))
    ref = train(model=model, dataset=ds, config=c, run_dir=tmp_path / "ref", seeds=Seeds(9, 9, 9))
    _assert_close(b["params"], ref["params"])


def test_a_population_member_reads_its_own_dataset(tmp_path):
    # code_vs_prose's children differ in their data (Child.dataset); trained together as
    # one population each must still read its own, like a run of its own.
    c = small_config(**{"spawn.population": True, "spawn.child_seeds": (1, 2), "num_steps": 10})
    sets = [data.load("synthetic", seed=s) for s in (0, 1)]
    model = models.from_config(c.model, sets[0].num_classes)
    kids = [training.Child(i, tmp_path / "run" / f"child_{i}", None, sets[i]) for i in (0, 1)]
    together = training.train_children(c, tmp_path / "run", model, sets[0], kids)
    assert list((tmp_path / "run").glob("population_*"))
    for i, s in enumerate((1, 2)):
        alone = train(model=model, dataset=sets[i], config=c, run_dir=tmp_path / f"alone{i}",
                      seeds=Seeds(s, s, s))  # fmt: skip
        _assert_close(together[i]["params"], alone["params"])
