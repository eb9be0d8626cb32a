"""Kill `lmc run` with SIGKILL at random moments; the rerun must finish bitwise-identical.

Covers kills during training, checkpoint writes and evaluation: the moments are drawn
uniformly over an uninterrupted run's wall time (seeded), so over the >= 5 kills they
land in different phases.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--config.data.name=synthetic",
    "--config.model.width=32",
    "--config.model.depth=2",
    "--config.batch_size=32",
    "--config.num_steps=120",
    "--config.spawn.mode=spawn",
    "--config.spawn.step=30",
    "--config.checkpoint.every_steps=10",
    "--config.eval.num_alphas=5",
    "--config.eval.train_subset=256",
    "--config.progress=False",
]


def _cmd(workdir):
    return [sys.executable, "-m", "lmc.cli", "run", f"--workdir={workdir}", *ARGS]


def _env():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return env


def _comparable(results: dict) -> dict:
    results = dict(results)
    results["provenance"] = {k: v for k, v in results["provenance"].items() if k != "wall_s"}
    for entry in results.get("methods", {}).values():
        entry.pop("align_s", None)
    return results


def _final_params(workdir: Path, child: str):
    import orbax.checkpoint as ocp

    ckpt_dir = workdir / child / "checkpoints"
    last = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(ckpt_dir / str(last) / "default")["params"]


def _has_tmp_checkpoint(workdir: Path) -> bool:
    return any("orbax-checkpoint-tmp" in p.name for p in workdir.glob("*/checkpoints/*"))


def _child_done(workdir: Path, i: int) -> bool:
    return (workdir / f"child_{i}" / "checkpoints" / "120").is_dir()


# Moments to kill at, each a condition on the workdir, checked every few ms, plus a
# small random delay: parent training, mid-checkpoint-write (an Orbax temp dir is
# present), child training, evaluation/alignment (both children finished).
MOMENTS = [
    ("parent training", lambda w: (w / "parent" / "metrics.jsonl").exists()),
    ("checkpoint write", _has_tmp_checkpoint),
    ("child 0 training", lambda w: (w / "child_0" / "metrics.jsonl").exists()),
    ("checkpoint write", _has_tmp_checkpoint),
    ("child 1 training", lambda w: (w / "child_1" / "metrics.jsonl").exists()),
    ("evaluation", lambda w: _child_done(w, 1)),
    ("evaluation", lambda w: _child_done(w, 1)),
]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_is_bitwise_identical(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_cmd(reference), env=_env(), check=True, capture_output=True, timeout=600)

    victim = tmp_path / "victim"
    rng = random.Random(0)
    killed = []
    for phase, ready in MOMENTS:
        proc = subprocess.Popen(
            _cmd(victim), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while proc.poll() is None and not ready(victim):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3) if phase != "checkpoint write" else 0.0)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed.append(phase)
        proc.wait()
    assert len(killed) >= 5, killed
    subprocess.run(_cmd(victim), env=_env(), check=True, capture_output=True, timeout=600)

    ref = json.loads((reference / "results.json").read_text())
    got = json.loads((victim / "results.json").read_text())
    assert _comparable(got) == _comparable(ref)
    for child in ("child_0", "child_1"):
        a, b = _final_params(reference, child), _final_params(victim, child)
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    strip = lambda p: [line.split('"wall_s"')[0] for line in p.read_text().splitlines()]
    for run in ("parent", "child_0", "child_1"):
        assert strip(victim / run / "metrics.jsonl") == strip(reference / run / "metrics.jsonl")
