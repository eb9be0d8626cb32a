"""Corrupted checkpoints, leftover temp directories, SIGTERM preemption, atomic outputs."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import small_config, subprocess_env, tiny_flags

from lmc import data, models
from lmc.runtime.checkpoint import Checkpointer
from lmc.training import Seeds, train


def _setup():
    c = small_config()
    c.checkpoint.every_steps = 10
    c.checkpoint.max_to_keep = 5
    ds = data.load("synthetic")
    return c, ds, models.from_config(c.model, ds.num_classes)


def _equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _largest_data_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "delete_array_dir", "flip_bytes"])
def test_corrupted_latest_checkpoint_falls_back_to_newest_intact(tmp_path, damage, caplog):
    c, ds, model = _setup()
    full = train(model=model, dataset=ds, config=c, run_dir=tmp_path / "full", seeds=Seeds(0, 0, 0))
    run = tmp_path / "run"
    train(model=model, dataset=ds, config=c, run_dir=run, seeds=Seeds(0, 0, 0), stop_step=30)
    step_dir = run / "checkpoints" / "30"
    if damage == "truncate":
        victim = _largest_data_file(step_dir)
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "delete_array_dir":
        shutil.rmtree(step_dir / "default" / "ocdbt.process_0")
    else:  # same size, different bytes: only the digest can tell
        victim = _largest_data_file(step_dir)
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
        victim.write_bytes(bytes(raw))
    # A crash mid-save also leaves an Orbax temp directory behind.
    (run / "checkpoints" / "40.orbax-checkpoint-tmp-1234").mkdir()
    resumed = train(model=model, dataset=ds, config=c, run_dir=run, seeds=Seeds(0, 0, 0))
    _equal(full["params"], resumed["params"])
    assert (run / "corrupt_checkpoints" / "30").is_dir()
    assert not (run / "checkpoints" / "40.orbax-checkpoint-tmp-1234").exists()


def test_every_checkpoint_corrupt_starts_over(tmp_path):
    c, ds, model = _setup()
    run = tmp_path / "run"
    train(model=model, dataset=ds, config=c, run_dir=run, seeds=Seeds(0, 0, 0), stop_step=10)
    for step in ("0", "10"):
        shutil.rmtree(run / "checkpoints" / step / "default" / "ocdbt.process_0")
    state = train(model=model, dataset=ds, config=c, run_dir=run, seeds=Seeds(0, 0, 0))
    assert int(state["step"]) == c.num_steps


def test_truncated_metrics_line_from_a_crash_is_dropped_on_resume(tmp_path):
    c, ds, model = _setup()
    run = tmp_path / "run"
    train(model=model, dataset=ds, config=c, run_dir=run, seeds=Seeds(0, 0, 0), stop_step=20)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 25, "train_lo')  # killed mid-write
    train(model=model, dataset=ds, config=c, run_dir=run, seeds=Seeds(0, 0, 0))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == sorted(steps) and steps[-1] == c.num_steps


def test_checkpoint_holds_plain_dicts_restorable_without_model_code(tmp_path):
    c, ds, model = _setup()
    train(model=model, dataset=ds, config=c, run_dir=tmp_path, seeds=Seeds(0, 0, 0))
    ckpt = Checkpointer(tmp_path / "checkpoints", every_steps=1)
    state = ckpt.restore(c.num_steps)
    ckpt.close()
    assert isinstance(state["params"], dict) and int(state["step"]) == c.num_steps


TINY = tiny_flags(
    **{
        "num_steps": 4000,
        "eval.num_alphas": 3,
        "eval.methods": ("naive",),
        "checkpoint.every_steps": 1000,
        "log_every_steps": 20,
    }
)


@pytest.mark.slow
def test_sigterm_saves_current_step_exits_75_and_rerun_continues(tmp_path):
    env = subprocess_env()
    cmd = [sys.executable, "-m", "lmc.cli", "run", f"--workdir={tmp_path}", *TINY]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "child_0" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    assert "preempted" in err and "Rerun the same command" in err
    steps = sorted(
        int(p.name) for p in (tmp_path / "child_0" / "checkpoints").iterdir() if p.name.isdigit()
    )
    preempt_step = steps[-1]
    assert 0 < preempt_step < 4000 and preempt_step % 1000 != 0  # saved off-schedule
    assert not (tmp_path / "results.json").exists()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == 4000
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is True
