"""Data order and augmentation: the properties the science depends on.

- the batch at step t follows epoch t // steps_per_epoch's own permutation, also
  across an epoch boundary, and each epoch visits every kept example exactly once;
- augmentation inside the train step is keyed by (aug seed, step): it changes from
  step to step and from seed to seed, and is the same for the same (seed, step), so a
  CIFAR run with augmentation killed in child training resumes bitwise identically.

The end-to-end checks go through the `lmc run` CLI and the workdir files only.
"""

import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import ROOT, subprocess_env

from lmc import data

# --------------------------------------------------------------------------- order


@pytest.mark.parametrize("n, batch", [(100, 10), (103, 10), (50, 7)])
def test_batches_after_an_epoch_boundary_follow_the_next_epochs_permutation(n, batch):
    per_epoch = data.steps_per_epoch(n, batch)
    epochs = [
        np.stack([data.batch_indices(5, e * per_epoch + i, batch, n) for i in range(per_epoch)])
        for e in range(4)
    ]
    for e, batches in enumerate(epochs):
        # The documented rule: epoch e is `epoch_permutation(seed, e)`, cut in order,
        # the remainder (n % batch examples) dropped.
        expected = data.epoch_permutation(5, e, n)[: per_epoch * batch].reshape(per_epoch, batch)
        np.testing.assert_array_equal(batches, expected)
    # Each epoch is a fresh order: reusing one epoch's order for the next would make
    # SGD see the same batch sequence every epoch. (The seed is fixed, so this is not
    # a probabilistic assertion; two fresh permutations of >= 50 items sharing even
    # their first batch would be a ~1e-12 coincidence.)
    for e in range(1, 4):
        assert not np.array_equal(epochs[e], epochs[0]), f"epoch {e} repeats epoch 0"
        assert not np.array_equal(epochs[e][0], epochs[e - 1][0])
    # Straddling the boundary: the last batch of epoch 0 and the first of epoch 1.
    last = data.batch_indices(5, per_epoch - 1, batch, n)
    first = data.batch_indices(5, per_epoch, batch, n)
    np.testing.assert_array_equal(last, epochs[0][-1])
    np.testing.assert_array_equal(first, epochs[1][0])


@pytest.mark.parametrize("n, batch", [(100, 10), (103, 10), (50, 7)])
def test_each_epoch_visits_every_kept_example_exactly_once(n, batch):
    per_epoch = data.steps_per_epoch(n, batch)
    dropped = []
    for e in range(5):
        seen = np.concatenate(
            [data.batch_indices(2, e * per_epoch + i, batch, n) for i in range(per_epoch)]
        )
        assert len(seen) == per_epoch * batch == n - n % batch
        assert len(np.unique(seen)) == len(seen), f"epoch {e} repeats an example"
        assert seen.min() >= 0 and seen.max() < n
        dropped.append(frozenset(range(n)) - frozenset(seen.tolist()))
    if n % batch:
        # A fresh permutation drops different examples each epoch; a fixed order would
        # never train on the same n % batch examples.
        assert len(set(dropped)) > 1


def test_process_shares_cover_an_epoch_exactly_once():
    n, batch, procs = 96, 16, 4
    per_epoch = data.steps_per_epoch(n, batch)
    for e in range(2):
        seen = np.concatenate(
            [
                data.process_batch_indices(9, e * per_epoch + i, batch, n, p, procs)
                for i in range(per_epoch)
                for p in range(procs)
            ]
        )
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))


def test_dataset_batches_follow_the_order():
    ds = data.load("synthetic", num_train=64, num_test=8)
    per_epoch = data.steps_per_epoch(ds.num_train, 16)
    for step in (per_epoch - 1, per_epoch, 2 * per_epoch + 1):
        x, y = ds.train_batch(4, step, 16)
        idx = data.batch_indices(4, step, 16, ds.num_train)
        np.testing.assert_array_equal(x, ds.train_x[idx])
        np.testing.assert_array_equal(y, ds.train_y[idx])


# --------------------------------------------------------------- augmentation op


def test_crop_and_flip_is_a_padded_crop_or_its_mirror():
    pad = 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12, 12, 3)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets, flips = set(), set()
    for k in range(8):
        out = np.asarray(data.crop_and_flip(jax.random.key(k), x, pad=pad))
        assert out.shape == x.shape
        for img, src in zip(out, padded, strict=True):
            found = [
                (i, j, flip)
                for i in range(2 * pad + 1)
                for j in range(2 * pad + 1)
                for flip in (False, True)
                if np.array_equal(
                    img[:, ::-1] if flip else img, src[i : i + x.shape[1], j : j + x.shape[2]]
                )
            ]
            assert found, "output is not a crop of the zero-padded image (or its mirror)"
            offsets.add(found[0][:2])
            flips.add(found[0][2])
    # 128 draws of 81 offsets x 2 flips: seeing under 10 offsets or one flip state
    # means the randomness is broken, not bad luck.
    assert len(offsets) >= 10 and flips == {False, True}


def test_crop_and_flip_same_key_same_output_other_key_other_output():
    x = np.random.default_rng(1).normal(size=(8, 32, 32, 3)).astype(np.float32)
    base = jax.random.key(3)
    outs = [np.asarray(data.crop_and_flip(jax.random.fold_in(base, s), x)) for s in range(4)]
    np.testing.assert_array_equal(outs[0], data.crop_and_flip(jax.random.fold_in(base, 0), x))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(outs[i], outs[j])


# ------------------------------------------------------------------ through the CLI


def _write_cifar(directory: Path, train_per_batch: int, num_test: int, same_image=False):
    """A `cifar-10-batches-py` directory: 5 train pickles + test_batch."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 3072), dtype=np.uint8)
    for name, count in [(f"data_batch_{i}", train_per_batch) for i in range(1, 6)] + [
        ("test_batch", num_test)
    ]:
        if same_image:
            batch = {b"data": np.repeat(image, count, 0), b"labels": [3] * count}
        else:
            batch = {
                b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                b"labels": [int(v) for v in rng.integers(0, 10, count)],
            }
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)
    return directory


def _cmd(workdir: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "lmc.cli", "run", f"--workdir={workdir}", *args]


def _run(workdir: Path, args: list[str]) -> None:
    proc = subprocess.run(
        _cmd(workdir, args),
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_augmentation_changes_with_step_and_seed_inside_training(tmp_path):
    # Every training image is the same picture with the same label, so the batch order
    # cannot matter, and lr=1e-30 keeps the weights unchanged to float32 precision:
    # the loss logged at each step is then a function of that step's augmentation
    # alone. Without augmentation (data.augment=False) this run logs one bitwise
    # identical loss at every step of both children (checked when this test was
    # written), so any difference below comes from the augmentation keys.
    cifar = _write_cifar(tmp_path / "cifar", train_per_batch=8, num_test=8, same_image=True)
    workdir = tmp_path / "run"
    steps = 6
    _run(
        workdir,
        [
            "--config.data.name=cifar10",
            f"--config.data.dir={cifar}",
            "--config.data.augment=True",
            "--config.model.name=cnn",
            "--config.model.width=4",
            "--config.batch_size=16",
            f"--config.num_steps={steps}",
            # Spawned at step 0: both children start from the same init and differ
            # only in their seeds (data order, irrelevant here, and augmentation).
            "--config.spawn.mode=spawn",
            "--config.spawn.step=0",
            "--config.spawn.child_seeds=(1, 2)",
            "--config.optimizer.learning_rate=1e-30",
            "--config.log_every_steps=1",
            "--config.eval.num_alphas=3",
            "--config.eval.methods=('naive',)",
            "--config.eval.batch_size=64",
            "--config.progress=False",
        ],
    )
    losses = {
        child: [r["train_loss"] for r in _metrics(workdir / child / "metrics.jsonl")]
        for child in ("child_0", "child_1")
    }
    for child, values in losses.items():
        assert len(values) == steps
        # A step-independent key would repeat one value; distinct random crops/flips
        # of 16 copies give a different batch mean at every step.
        assert len(set(values)) == steps, f"{child}: augmentation repeats across steps {values}"
    # Same step, different aug seed: different augmentation.
    assert all(a != b for a, b in zip(losses["child_0"], losses["child_1"], strict=True)), losses


CIFAR_ARGS = [
    "--config.data.name=cifar10",
    "--config.data.augment=True",
    "--config.model.name=cnn",
    "--config.model.width=4",
    "--config.model.norm=batchnorm",  # running statistics must resume too
    "--config.batch_size=32",
    "--config.num_steps=60",
    "--config.spawn.mode=spawn",
    "--config.spawn.step=10",
    "--config.checkpoint.every_steps=25",  # the kill lands between 25 and 60
    "--config.log_every_steps=5",
    "--config.eval.num_alphas=3",
    "--config.eval.methods=('naive','weight_matching')",
    "--config.eval.train_subset=64",
    "--config.eval.batch_size=64",
    "--config.eval.bn_reset_batches=2",
    "--config.progress=False",
]
FINAL_STEP = 60


def _comparable(results: dict) -> dict:
    results = json.loads(json.dumps(results))
    results["provenance"].pop("wall_s", None)
    for entry in results.get("methods", {}).values():
        entry.pop("align_s", None)
    return results


def _steps(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def _final_state(run_dir: Path) -> dict:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(run_dir / "checkpoints" / str(FINAL_STEP) / "default")
    return {"params": state["params"], "model_state": state["model_state"]}


@pytest.mark.slow
def test_cifar_spawn_with_augmentation_killed_in_child_training_resumes_bitwise(tmp_path):
    # 256 train / 64 test 32x32x3 images: 8 steps per epoch, so the 60 steps cross 7
    # epoch boundaries and the children's 50 steps each use augmentation.
    cifar = _write_cifar(tmp_path / "cifar", train_per_batch=52, num_test=64)
    args = [*CIFAR_ARGS, f"--config.data.dir={cifar}"]
    reference = tmp_path / "reference"
    _run(reference, args)

    victim = tmp_path / "victim"
    child = victim / "child_0"
    proc = subprocess.Popen(
        _cmd(victim, args), cwd=ROOT, env=subprocess_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Kill once child 0 has a finished checkpoint past the spawn step (so the rerun
    # resumes mid-child, with a restored step counter) and before its last one.
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if any(10 < s < FINAL_STEP for s in _steps(child)):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The kill hit child training: child 0 unfinished, child 1 not started, no results.
    assert FINAL_STEP not in _steps(child), _steps(child)
    assert not _steps(victim / "child_1") and not (victim / "results.json").exists()

    _run(victim, args)
    ref = json.loads((reference / "results.json").read_text())
    got = json.loads((victim / "results.json").read_text())
    assert got["complete"] is True
    assert _comparable(got) == _comparable(ref)
    for name in ("child_0", "child_1"):
        a, b = _final_state(reference / name), _final_state(victim / name)
        assert jax.tree.structure(a) == jax.tree.structure(b)
        jax.tree.map(np.testing.assert_array_equal, a, b)
        strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
        assert strip(_metrics(victim / name / "metrics.jsonl")) == strip(
            _metrics(reference / name / "metrics.jsonl")
        )
