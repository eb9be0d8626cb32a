"""`lmc run --config.model.name=module:factory` on a user's NNX and linen models:
pair and instability through the CLI, endpoints checked against the user's own module
run by hand on the checkpointed weights; a factory's mistakes are user errors."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import plugin_models
import pytest
from flax import nnx
from helpers import tiny_flags

from lmc.cli import main
from lmc.data import load
from lmc.runtime.checkpoint import Checkpointer

TINY = tiny_flags(**{"model.width": 8, "num_steps": 6, "eval.num_alphas": 3,
                     "eval.train_subset": 64, "align.max_iter": 5})  # fmt: skip


def by_hand_test_loss(factory: str, state: dict, data) -> float:
    """The test loss of the user's module holding `state`, without lmc's model code."""
    x, y = jnp.asarray(data.test_x), data.test_y
    config = ml_collections.ConfigDict({"width": 8})
    if factory == "nnx_mlp":
        module = plugin_models.nnx_mlp(data.num_classes, data.input_shape, config, nnx.Rngs(0))
        for kind, pure in ((nnx.Param, state["params"]), (nnx.BatchStat, state["model_state"])):
            variables = nnx.state(module, kind)
            nnx.replace_by_pure_dict(variables, pure)
            nnx.update(module, variables)
        module.eval()
        logits = module(x)
    else:
        logits = plugin_models.linen_mlp(data.num_classes, config=config).apply(
            {"params": state["params"]}, x
        )
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())


@pytest.mark.parametrize("factory", ["nnx_mlp", "linen_mlp"])
def test_pair_and_instability_on_a_users_model(tmp_path, factory):
    name = f"--config.model.name=plugin_models:{factory}"
    assert main(["lmc", "run", name, *TINY, f"--workdir={tmp_path / 'pair'}"]) == 0
    results = json.loads((tmp_path / "pair" / "results.json").read_text())
    assert results["complete"] and results["config"]["model"]["name"] == f"plugin_models:{factory}"
    ckpt = Checkpointer(tmp_path / "pair" / "child_0" / "checkpoints", every_steps=0)
    try:
        _, state = ckpt.restore_latest()
    finally:
        ckpt.close()
    want = by_hand_test_loss(factory, jax.tree.map(np.asarray, state), load("synthetic"))
    np.testing.assert_allclose(results["endpoints"]["a"]["test_loss"], want, rtol=1e-4)

    assert main(["lmc", "run", name, *TINY, "--config.experiment=instability",
                 "--config.spawn.mode=spawn", "--config.instability.spawn_steps=(0,3)",
                 f"--workdir={tmp_path / 'instability'}"]) == 0  # fmt: skip
    points = json.loads((tmp_path / "instability" / "results.json").read_text())["points"]
    assert [p["spawn_step"] for p in points] == [0, 3]


@pytest.mark.parametrize(
    "name, message",
    [
        ("no_such_module:f", "cannot import 'no_such_module'"),
        ("plugin_models:nope", "has no callable 'nope'"),
        ("plugin_models:nnx_without_rngs", "takes no `rngs` argument"),
        (":f", "'package.module:factory'"),
    ],
)
def test_plugin_mistakes_are_user_errors(tmp_path, capsys, name, message):
    assert main(["lmc", "run", f"--config.model.name={name}", *TINY, f"--workdir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err


def test_the_width_experiment_scales_a_plugins_integer_width_to_units():
    from helpers import small_config

    from lmc.experiments import width

    config = small_config()
    config.model.name, config.model.width = "plugin_models:nnx_mlp", 8
    scaled = width.scaled(config, 0.5).model.width
    assert scaled == 4 and isinstance(scaled, int)
