"""code_vs_prose: which corpus, seeds, checkpoint and held-out windows each network gets.

The experiment forks a parent trained on the code+prose mixture into a code child and a
prose child; a prose child trained on the mixture, or evaluated on held-in windows,
would still give plausible curves. References here load each corpus on its own
(`text:code`, `text:prose`: no `TextDataset.only`, no code_vs_prose wiring), train with
`training.train` from a fresh init or from a parent state this test trains itself, and
score networks with a plain cross-entropy over the corpus's held-out windows.
"""

import jax
import numpy as np
import optax
import pytest
from helpers import final_checkpoint, tiny_lm_config

from lmc import training
from lmc.experiments import run_experiment
from lmc.experiments.common import setup
from lmc.training import Seeds, train


def _final(run_dir):
    return training.endpoint(final_checkpoint(run_dir))


def _assert_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_code_vs_prose_children_read_their_own_corpus_and_are_scored_on_held_out_text(tmp_path):
    c = tiny_lm_config(tmp_path, "code_vs_prose")
    # Fork at k = 0 only: the parent trains on to step N, so its last kept checkpoint
    # (N) is not k, and parent_at_k must be the init.
    c.instability.spawn_steps = (0,)
    # Sequential children: a vmapped transformer population is not bitwise a single run,
    # and Adam turns that float noise into 1e-3 weight differences on near-zero gradients
    # (the population's per-member data: tests/training/test_engine_inputs_training.py).
    c.spawn.child_seeds = (5, 6)
    c.eval.methods = ("naive",)
    results = run_experiment(c, tmp_path / "run")
    run = tmp_path / "run"

    mixed = setup.load_data(c)
    code, prose = (setup.load_data(c, f"text:{d}") for d in ("code", "prose"))
    model = setup.load_model(c, mixed)

    def fit(ds, seeds, name):
        state = train(model=model, dataset=ds, config=c, run_dir=tmp_path / name, seeds=seeds)
        return training.endpoint(jax.device_get(state))

    expected = {
        "k0/code": fit(code, Seeds(c.seed, 5, 5), "code0"),
        "k0/prose": fit(prose, Seeds(c.seed, 6, 6), "prose0"),
        "independent/prose": fit(prose, Seeds(6, 6, 6), "indep"),
    }
    for where, ref in expected.items():
        _assert_equal(_final(run / where)["params"], ref["params"])

    apply = jax.jit(model.apply, static_argnums=3)

    def loss(endpoint, x, y):
        logits, _ = apply(endpoint["params"], endpoint["model_state"], x, False)
        return float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())

    # Every network is scored on each corpus's held-out evaluation windows.
    init = training.endpoint(training.init_state(model, optax.identity(), c.seed, code.train_x[:1]))
    (k0,) = results["spawn"]
    networks = {"parent_at_k": init, "code_child": expected["k0/code"],
                "prose_child": expected["k0/prose"]}  # fmt: skip
    for name, network in networks.items():
        for domain, ds in (("code", code), ("prose", prose)):
            got = k0["models"][name][domain]["loss"]
            assert got == pytest.approx(loss(network, ds.test_x, ds.test_y), rel=1e-5), (
                name,
                domain,
            )
    ind = results["independent"]["models"]["prose_child"]["prose"]["loss"]
    assert ind == pytest.approx(
        loss(expected["independent/prose"], prose.test_x, prose.test_y), rel=1e-5
    )
    # Held-out and held-in windows score differently, so the checks above tell them apart.
    held_in = loss(expected["k0/prose"], prose.train_x, prose.train_y)
    assert abs(held_in - k0["models"]["prose_child"]["prose"]["loss"]) > 1e-3
