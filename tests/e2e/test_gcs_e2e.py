"""`lmc run` into gs:// (the GCS emulator) end to end: a spawn pair is SIGKILLed mid
training, rerun (it takes over the dead run's lock and resumes), reported with
`lmc report gs://...`, and compared bitwise with the same command into a local dir."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
from helpers import ROOT, subprocess_env, tiny_flags

from lmc.runtime import io

pytest_plugins = ["gcs_emulator"]  # the gcs_emulator and gcs_root fixtures

SPAWN_STEP = 40
STEPS = 120
ARGS = tiny_flags(
    **{
        "num_steps": STEPS,
        "spawn.mode": "spawn",
        "spawn.step": SPAWN_STEP,
        "checkpoint.every_steps": 20,
        "log_every_steps": 10,
        "eval.num_alphas": 3,
        "eval.batch_size": 256,
    }
)
TIMING_KEYS = ("wall_s", "align_s")


def _cmd(*args):
    return [sys.executable, "-m", "lmc.cli", *args]


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(*args), env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _comparable(results: dict, workdir: str) -> dict:
    """results.json without timing keys, with the workdir replaced by a placeholder."""

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in TIMING_KEYS}
        if isinstance(x, list):
            return [clean(v) for v in x]
        if isinstance(x, str):
            return x.replace(workdir, "WORKDIR")
        return x

    return clean(results)


def _metrics(path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
        for line in io.read_lines(path)
    ]


def _final_params(workdir: str, child: str):
    from lmc.runtime.checkpoint import Checkpointer

    ckpt = Checkpointer(io.path(workdir) / child / "checkpoints", every_steps=1, read_only=True)
    try:
        steps = ckpt.steps()
        assert steps[-1] == STEPS, steps
        return ckpt.restore(STEPS)["params"]
    finally:
        ckpt.close()


def test_gcs_run_killed_resumed_reported_equals_local(gcs_root, tmp_path, capsys):
    remote = f"{gcs_root}/run"
    local = str(tmp_path / "run")
    # The killed run into gs://, polled until a child checkpoint past the spawn point is
    # committed (Orbax's commit marker on GCS).
    proc = subprocess.Popen(
        _cmd("run", f"--workdir={remote}", *ARGS),
        env=subprocess_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    # The local reference runs meanwhile (the machine has 2 cores).
    reference = subprocess.Popen(
        _cmd("run", f"--workdir={local}", *ARGS),
        env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    from lmc.runtime.checkpoint import committed_steps

    ckpts = f"{remote}/child_0/checkpoints"
    deadline = time.monotonic() + 240
    try:
        while not any(s > SPAWN_STEP for s in committed_steps(ckpts)):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no child checkpoint within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert not io.exists(f"{remote}/results.json")
    lock = io.read_json(f"{remote}/.lmc.lock")  # left behind by the killed run
    assert lock["pid"] == proc.pid

    rerun = _run("run", f"--workdir={remote}", *ARGS)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"taking over the lock {remote}/.lmc.lock" in rerun.stderr
    assert f"its process {proc.pid} on this host is gone" in rerun.stderr
    assert "child_0: resuming from step" in rerun.stderr
    assert not io.exists(f"{remote}/.lmc.lock")  # released

    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    from lmc.cli import main

    assert main(["lmc", "report", remote]) == 0  # in-process: one interpreter start less
    report = capsys.readouterr().out
    assert f"| {remote} |" in report and "weight_matching" in report

    assert _comparable(io.read_json(f"{remote}/results.json"), remote) == _comparable(
        io.read_json(f"{local}/results.json"), local
    )
    assert io.read_json(f"{remote}/config.json") == io.read_json(f"{local}/config.json")
    assert io.exists(f"{remote}/curves.png")
    for run in ("parent", "child_0", "child_1"):
        remote_metrics = _metrics(f"{remote}/{run}/metrics.jsonl")
        assert remote_metrics == _metrics(f"{local}/{run}/metrics.jsonl"), run
        assert remote_metrics and remote_metrics[-1]["step"] in (SPAWN_STEP, STEPS)
    for child in ("child_0", "child_1"):
        a, b = _final_params(remote, child), _final_params(local, child)
        for x, y in zip(_leaves(a), _leaves(b), strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y)


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
