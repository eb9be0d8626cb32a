"""Kill `lmc run` with SIGKILL at 7 moments; the rerun must finish bitwise-identical.

The moments: parent training, child 0 training, child 1 training, two checkpoint
writes (an Orbax temp dir present) and two in evaluation (alignment under way). Each
kill waits for evidence that *this* process is in that phase (its run's metrics file
grew since it started, the temp dir exists, or it logged the alignment), and the test
asserts which phase every kill hit.
"""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import subprocess_env, tiny_flags

ARGS = tiny_flags(
    **{
        "num_steps": 120,
        "spawn.mode": "spawn",
        "spawn.step": 30,
        "checkpoint.every_steps": 10,
        "log_every_steps": 5,  # metrics lines: evidence that training is live
    }
)


def _cmd(workdir):
    return [sys.executable, "-m", "lmc.cli", "run", f"--workdir={workdir}", *ARGS]


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


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _training(run: str):
    """Training of `run` is live in this process: its metrics file grew since start."""

    def check(w: Path, start: dict, err: list) -> bool:
        del err
        path = w / run / "metrics.jsonl"
        return _lines(path) > start.setdefault(run, _lines(path))

    return check


def _writing_checkpoint(w: Path, start: dict, err: list) -> bool:
    del start, err
    return _has_tmp_checkpoint(w)


def _evaluating(w: Path, start: dict, err: list) -> bool:
    del start
    # Weight matching traces the spec first: logged once both children are trained.
    return _child_done(w, 1) and any("spec_from_model" in line for line in err)


MOMENTS = [
    ("parent training", _training("parent")),
    ("checkpoint write", _writing_checkpoint),
    ("child 0 training", _training("child_0")),
    ("checkpoint write", _writing_checkpoint),
    ("child 1 training", _training("child_1")),
    ("evaluation", _evaluating),
    ("evaluation", _evaluating),
]


@pytest.mark.slow
def test_sigkill_at_7_moments_then_rerun_is_bitwise_identical(tmp_path):
    import threading

    reference = tmp_path / "reference"
    subprocess.run(
        _cmd(reference), env=subprocess_env(), check=True, capture_output=True, timeout=600
    )

    victim = tmp_path / "victim"
    rng = random.Random(0)
    hit = []
    for phase, ready in MOMENTS:
        proc = subprocess.Popen(
            _cmd(victim), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        err: list[str] = []
        reader = threading.Thread(target=lambda p=proc, e=err: e.extend(p.stderr), daemon=True)
        reader.start()
        start: dict = {}
        ready(victim, start, err)  # note the metrics sizes at start
        while proc.poll() is None and not ready(victim, start, err):
            time.sleep(0.002)
        if phase != "checkpoint write":
            time.sleep(rng.uniform(0.0, 0.05))
        in_phase = proc.poll() is None and ready(victim, start, err)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(5)
        hit.append(phase if in_phase else f"missed {phase}")
    # Every training and evaluation moment is hit; a checkpoint write lasts
    # milliseconds, so at least one of the two.
    assert [h for h in hit if "checkpoint" not in h] == [
        "parent training", "child 0 training", "child 1 training", "evaluation", "evaluation",
    ], hit  # fmt: skip
    assert "checkpoint write" in hit, hit
    subprocess.run(_cmd(victim), env=subprocess_env(), check=True, capture_output=True, timeout=600)

    ref = json.loads((reference / "results.json").read_text())
    got = json.loads((victim / "results.json").read_text())
    assert _comparable(got) == _comparable(ref)
    for child in ("child_0", "child_1"):
        a, b = _final_params(reference, child), _final_params(victim, child)
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    strip = lambda p: [line.split('"wall_s"')[0] for line in p.read_text().splitlines()]
    for run in ("parent", "child_0", "child_1"):
        assert strip(victim / run / "metrics.jsonl") == strip(reference / run / "metrics.jsonl")
