"""Two JAX processes on loopback (jax.distributed + gloo) train like one process.

The 2-process run is launched with launch/local_multihost.sh, as a user would on a
laptop: the default experiment in spawn mode, shrunk (parent to step 10, children to
step 30). The 1-process baseline runs in this test process (8 fake devices)
meanwhile, and then restores the 2-process checkpoints.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import ROOT

from lmc.cli.sweep import format_value

LAUNCHER = ROOT / "launch" / "local_multihost.sh"
OVERRIDES = {
    "data.name": "synthetic",
    "model.width": 32,
    "num_steps": 30,
    "spawn.mode": "spawn",
    "spawn.step": 10,
    "eval.methods": ("naive",),
    "eval.num_alphas": 3,
    "eval.train_subset": 256,
    "progress": False,
}


def _config():
    from configs import default

    c = default.get_config()
    for key, value in OVERRIDES.items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _final_params(workdir: Path, run: str):
    from lmc.runtime.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir / run / "checkpoints", every_steps=1, read_only=True)
    try:
        # No target: restored onto this process's first device, whoever wrote it.
        return ckpt.restore(ckpt.steps()[-1])["params"]
    finally:
        ckpt.close()


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol, atol),
                 a, b)  # fmt: skip


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _flat(tree[k], f"{prefix}{k}.")
    else:
        yield prefix, tree


def _assert_numbers_close(r1: dict, r2: dict) -> None:
    pick = lambda r: {"endpoints": r["endpoints"],
                      "barriers": {m: e["barrier"] for m, e in r["methods"].items()}}  # fmt: skip
    for (ka, va), (kb, vb) in zip(_flat(pick(r1)), _flat(pick(r2)), strict=True):
        assert ka == kb
        assert va == pytest.approx(vb, rel=1e-4, abs=1e-5), ka


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_two_processes_match_one_and_their_checkpoints_restore_in_one(tmp_path):
    from lmc import data, models, training
    from lmc.experiments import run_experiment
    from lmc.training import train

    two, one = tmp_path / "two", tmp_path / "one"
    args = [f"--config.{k}={format_value(v)}" for k, v in OVERRIDES.items()]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    multi = subprocess.Popen(
        ["bash", str(LAUNCHER), "--devices_per_process=1", "2", sys.executable, "-m", "lmc.cli",
         "run", "--config=configs/default.py", f"--workdir={two}", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        config = _config()
        r1 = run_experiment(config, one)
        out, _ = multi.communicate(timeout=300)
    finally:
        if multi.poll() is None:
            multi.kill()
    assert multi.returncode == 0, out[-3000:]
    # Only process 0 prints the table and writes outputs.
    assert "[0] | run" in out and "[1] | run" not in out, out[-3000:]
    assert not list(two.glob("**/*.tmp"))
    r2 = json.loads((two / "results.json").read_text())
    assert "2 process(es)" in r2["provenance"]["devices"]
    _assert_numbers_close(r1, r2)
    for run in ("parent", "child_0", "child_1"):
        _assert_close(_final_params(one, run), _final_params(two, run))

    # The trainer resumes from the 2-process checkpoints onto this process's 8-device
    # mesh: every run is finished, so nothing is trained and the state is the final one.
    ds = data.load("synthetic")
    model = models.from_config(config.model, ds.num_classes)
    metrics_before = (two / "child_1" / "metrics.jsonl").read_text()
    state = train(model=model, dataset=ds, config=config, run_dir=two / "child_1",
                  seeds=training.child_seeds(config, 1))  # fmt: skip
    assert int(state["step"]) == 30
    assert (two / "child_1" / "metrics.jsonl").read_text() == metrics_before
    _assert_close(state["params"], _final_params(one, "child_1"))
