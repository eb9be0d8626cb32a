"""What many test modules share: the repository root, the tiny preset (as a config and
as command-line flags), a cheap init, a subprocess environment and a checkpoint reader.

Importable from every test folder: pytest puts `tests/` on sys.path when it loads
`tests/conftest.py`. Importing this module also puts the repository root there, so
`import configs.<name>` and `import docs.regenerate` work without installing them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax

from lmc import data

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The default config shrunk to run in seconds on synthetic data. One device: the 8
# fake CPU devices would make every tiny run 8-way data parallel (4x the CPU time);
# sharding tests build their own meshes.
TINY = {
    "data.name": "synthetic",
    "model.width": 32,
    "model.depth": 2,
    "batch_size": 32,
    "num_steps": 40,
    "progress": False,
    "eval.num_alphas": 5,
    "eval.train_subset": 256,
    "eval.batch_size": 128,
    "align.max_iter": 20,
    "mesh.data": 1,
}


def small_config(**overrides) -> ml_collections.ConfigDict:
    """`configs/default.py` with TINY and then `overrides` ({"a.b": value}) applied."""
    from configs import default

    c = default.get_config()
    for key, value in {**TINY, **overrides}.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def tiny_flags(**overrides) -> list[str]:
    """TINY and then `overrides` as `lmc run` flags (`--config.a.b=value`)."""
    return [f"--config.{key}={_flag_value(v)}" for key, v in {**TINY, **overrides}.items()]


def _flag_value(value) -> str:
    return repr(value) if isinstance(value, tuple) else str(value)


def numpy_init(model, x, seed: int) -> tuple[dict, dict]:
    """(params, model_state): He-normal kernels, zero biases, unit BN scales, drawn
    with NumPy.

    `model.init` compiles a jax.random kernel per parameter shape, which costs
    seconds per model on a busy 2-core machine; the tests only need two different,
    reasonable starting points.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        fill = 1.0 if name in ("scale", "var") else 0.0
        return np.full(leaf.shape, fill, np.float32)

    return jax.tree.map_with_path(draw, shapes)


def subprocess_env(**extra) -> dict:
    """The environment of an `lmc` subprocess: CPU, one device (the run is compared
    with in-process or earlier runs), this checkout first on the path."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), **extra}
    env.pop("XLA_FLAGS", None)
    return env


def final_checkpoint(run_dir: Path) -> dict:
    """The last checkpoint of a finished run, as saved (plain numpy)."""
    from lmc.runtime.checkpoint import Checkpointer

    ckpt = Checkpointer(Path(run_dir) / "checkpoints", every_steps=1, read_only=True)
    try:
        return ckpt.restore_latest()[1]
    finally:
        ckpt.close()


def train_pair(model, ds, steps, lr, batch=64):
    """Two networks from independent inits and data orders, trained with Adam."""
    opt = optax.adam(lr)

    @jax.jit
    def step(params, state, opt_state, x, y):
        def loss_fn(p):
            logits, new_state = model.apply(p, state, x, True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

        grads, new_state = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state

    ends = []
    for seed in (0, 1):
        params, state = numpy_init(model, ds.train_x[:1], seed)
        opt_state = opt.init(params)
        for t in range(steps):
            idx = data.batch_indices(seed, t, batch, ds.num_train)
            params, state, opt_state = step(
                params, state, opt_state, ds.train_x[idx], ds.train_y[idx]
            )
        ends.append({"params": params, "model_state": state})
    return ends


# Language-model runs on tiny corpora.
WORDS = {
    "code": "def f(x):\n    return x + 1\nclass A:\n    pass\nimport os\nfor i in range(3):\n",
    "prose": "The quick brown fox jumps over the lazy dog. A module is a file of code. ",
}


def corpus(root: Path, kind: str, suffix: str) -> str:
    """A directory of six small random files of code or prose lines."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(kind))
    lines = WORDS[kind].splitlines(keepends=True) or [WORDS[kind]]
    for i in range(6):
        body = "".join(rng.choice(lines) for _ in range(40))
        (root / f"f{i}{suffix}").write_text(body)
    return str(root)


def tiny_lm_config(tmp_path, experiment):
    """`lm_config()` shrunk to run in seconds on tiny code and prose corpora."""
    from lmc.config_base import lm_config

    c = lm_config()
    c.experiment = experiment
    c.data.code_dir = corpus(tmp_path / "code", "code", ".py")
    c.data.prose_dir = corpus(tmp_path / "prose", "prose", ".txt")
    c.data.context = 16
    c.data.eval_windows = 8
    c.model.width, c.model.heads, c.model.depth, c.model.context = 16, 2, 1, 16
    c.batch_size = 8
    c.num_steps = 6
    c.optimizer.warmup_steps = 1
    c.progress = False
    c.eval.num_alphas = 3
    c.eval.batch_size = 16
    c.align.max_iter = 5
    c.instability.spawn_steps = (0,)  # k > 0 forks: covered by the instability test
    return c
