"""Given checkpoints through the engine (configs/checkpoint_pair.py): tiny Llama-style
checkpoints initialized independently and trained briefly here, then every alignment
method and MergeMany on text tokenized by the checkpoints' own tokenizer."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from lmc.cli import main
from lmc.errors import UserError
from lmc.experiments import run_experiment
from lmc.experiments.common import setup
from lmc.models import hub

FIXTURE = ROOT / "tests" / "fixtures" / "hub" / "llama"
METHODS = ("naive", "weight_matching", "activation_matching", "ste", "weight_matching_heads",
           "weight_matching_orthogonal", "learned_matching")  # fmt: skip
LINES = ["def f(x):\n    return x + 1\n", "The quick brown fox jumps over the lazy dog.\n",
         "for i in range(3):\n    print(i)\n", "A module is a file of code.\n"]  # fmt: skip


def corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        (root / f"f{i}.txt").write_text("".join(rng.choice(LINES) for _ in range(30)))
    return root


def config(tmp_path, text, dirs):
    from configs import checkpoint_pair

    c = checkpoint_pair.get_config()
    c.checkpoints.a, c.checkpoints.b, c.checkpoints.more = str(dirs[0]), str(dirs[1]), ()
    c.data.name, c.data.dir = "text:dir", str(text)
    c.data.context, c.data.eval_windows, c.data.test_fraction = 12, 8, 0.3
    c.batch_size, c.progress, c.mesh.data = 8, False, 1
    c.eval.num_alphas, c.eval.batch_size = 3, 16
    c.align.max_iter, c.align.ste_steps, c.align.learned_steps = 5, 2, 2
    c.align.activation_batches = 2
    return c


def train_briefly(init, dataset, seed: int, steps: int = 5) -> dict:
    """A few Adam steps on the training windows (data order `seed`)."""
    import jax
    import optax

    from lmc.evaluate.metrics import cross_entropy as xent

    def loss(params, x, y):
        return xent(init.model.apply(params, {}, x, False)[0], y).mean()

    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(loss)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = init.tree["params"]
    state = opt.init(params)
    for t in range(steps):
        x, y = dataset.train_batch(seed, t, 8)
        params, state = step(params, state, x, y)
    return {"params": params, "model_state": {}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three tiny Llama checkpoints (multi-head: kv heads = heads; one layer) from
    different init seeds; the first two trained briefly, each on its own data order."""
    tmp = tmp_path_factory.mktemp("checkpoints")
    text = corpus(tmp / "text")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    cfg.update(num_key_value_heads=cfg["num_attention_heads"], num_hidden_layers=1)
    dirs = [tmp / f"model{i}" for i in range(3)]
    dataset = setup.load_data(config(tmp, text, [FIXTURE, FIXTURE]))
    for i, d in enumerate(dirs):
        init = hub.init(cfg, seed=i, tokenizer_dir=FIXTURE)
        tree = train_briefly(init, dataset, seed=i) if i < 2 else init.tree
        hub.save(d, tree, like=init)
    return tmp, text, dirs


def cross_entropy(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, labels[..., None], -1).mean())


def test_lmc_run_aligns_two_given_checkpoints_with_every_method(checkpoints):
    tmp, text, dirs = checkpoints
    workdir = tmp / "pair"
    methods = "(" + ",".join(repr(m) for m in METHODS) + ")"
    argv = ["lmc", "run", "--config=configs/checkpoint_pair.py", f"--workdir={workdir}",
            f"--config.checkpoints.a={dirs[0]}", f"--config.checkpoints.b={dirs[1]}",
            "--config.data.name=text:dir", f"--config.data.dir={text}",
            "--config.data.context=12", "--config.data.eval_windows=8",
            "--config.data.test_fraction=0.3", "--config.eval.num_alphas=3",
            "--config.align.max_iter=5", "--config.align.ste_steps=2",
            "--config.align.learned_steps=2", "--config.align.activation_batches=2",
            "--config.mesh.data=1", "--config.progress=False", f"--config.eval.methods={methods}"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((workdir / "results.json").read_text())
    for method in METHODS:
        entry = results["methods"][method]
        assert "error" not in entry, (method, entry.get("error"))
        assert np.isfinite(entry["barrier"]["test_loss"])
    assert not (workdir / "child_0").exists()  # nothing was trained

    # Endpoint a's held-out loss, by hand from the reloaded checkpoint's logits.
    c = config(tmp, text, dirs)
    dataset = setup.load_data(c)
    a = hub.load(dirs[0])
    logits = np.asarray(a.model.apply(a.tree["params"], {}, dataset.test_x, False)[0], np.float64)
    want = cross_entropy(logits, dataset.test_y)
    got = results["endpoints"]["a"]
    assert got["test_loss"] == pytest.approx(want, rel=1e-5)
    assert results["methods"]["naive"]["curves"]["test_loss"][0] == pytest.approx(want, rel=1e-5)
    # Bits per byte count the text's bytes, not tokens: every file is read (no cap
    # reached), each followed by one end-of-document token.
    tok = hub.load_tokenizer(dirs[0])
    files = [p.read_text() for p in sorted(text.iterdir())]
    tokens = sum(len(tok.encode(f, add_special_tokens=False).ids) + 1 for f in files)
    per_token = sum(len(f.encode()) for f in files) / tokens
    assert per_token > 1.2  # the BPE merges parts of words of this text
    assert got["test_bits_per_byte"] == pytest.approx(want / math.log(2) / per_token, rel=1e-4)


def test_merge_many_over_given_checkpoints(checkpoints):
    tmp, text, dirs = checkpoints
    c = config(tmp, text, dirs)
    c.experiment = "merge_many"
    c.checkpoints.more = (str(dirs[2]),)
    results = run_experiment(c, tmp / "merge")
    assert len(results["models"]) == 3
    dataset = setup.load_data(c)
    for d, metrics in zip(dirs, results["models"], strict=True):
        m = hub.load(d)
        logits = np.asarray(m.model.apply(m.tree["params"], {}, dataset.test_x, False)[0])
        assert metrics["test_loss"] == pytest.approx(cross_entropy(logits, dataset.test_y), 1e-5)
    assert np.isfinite(results["merged"]["test_loss"])


def test_checkpoint_config_mistakes_are_user_errors(checkpoints, tmp_path):
    tmp, text, dirs = checkpoints
    c = config(tmp, text, dirs)
    c.checkpoints.b = ""
    with pytest.raises(UserError, match="needs config.checkpoints.a and .b"):
        run_experiment(c, tmp_path / "w1")
    c = config(tmp, text, dirs)
    c.model.name = "transformer"
    with pytest.raises(UserError, match="set config.model.name='checkpoint'"):
        run_experiment(c, tmp_path / "w2")
    other = tmp_path / "other"
    shutil.copytree(dirs[1], other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": 1e-3}))
    c = config(tmp, text, [dirs[0], other])
    with pytest.raises(UserError, match="another architecture"):
        run_experiment(c, tmp_path / "w3")
    c = config(tmp, text, dirs)
    c.experiment = "instability"
    with pytest.raises(UserError, match="instability experiment trains its own networks"):
        run_experiment(c, tmp_path / "w4")


def test_tfds_text_is_tokenized_per_example_and_joined_by_the_end_of_document_token():
    import tensorflow_datasets as tfds

    from lmc.data.text import load_text

    tok = hub.load_tokenizer(FIXTURE)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load_text("tfds:lm1b", None, context=8, eval_windows=4, tokenizer=str(FIXTURE))
        examples = [ex["text"] for ex in tfds.data_source("lm1b", split="train")]
    want = []
    for text in examples:
        want += tok.encode(text, add_special_tokens=False).ids + [tok.token_to_id("<|endoftext|>")]
    np.testing.assert_array_equal(data.domains[0].train, want)
    assert data.num_classes == tok.get_vocab_size()
    with pytest.raises(UserError, match="text:tfds:no_such_dataset: not available"):
        load_text("tfds:no_such_dataset", None, tokenizer=str(FIXTURE))
