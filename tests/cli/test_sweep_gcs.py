"""`lmc sweep` into gs:// (the GCS emulator, which honours generation preconditions): a
shared parent trained once, two instability points spawned from it, the pooled
results.json and `lmc report gs://...`; the points' TensorBoard event files reach the
bucket (a staged tracker, copied when each run ends) and TensorBoard reads them.

The points run in this process (`_InProcess` stands in for their `subprocess.Popen`):
what is particular to gs:// is the driver's and the runs' files, locks and listings,
while the subprocess side (logs, kills, parent-death signal) is local-path agnostic
and tested in test_sweep.py; four interpreter starts would cost most of this test."""

import contextlib
import io as io_lib
import json
import subprocess

import pytest
from matplotlib.figure import Figure

from lmc import cli
from lmc.cli import sweep
from lmc.runtime import io

pytest_plugins = ["gcs_emulator"]  # the gcs_emulator and gcs_root fixtures

CONFIG = """
from lmc.config_base import base_config


def get_config(arg=None):
    c = base_config()
    c.experiment = "instability"
    c.data.name = "synthetic"
    c.model.width, c.model.depth = 8, 1
    c.batch_size = 32
    c.num_steps = 10
    c.progress = False
    c.mesh.data = 1
    c.spawn.mode = "spawn"
    c.spawn.child_seeds = (1, 2)
    c.instability.spawn_steps = (0, 5)
    c.instability.num_pairs = 1
    c.eval.methods = ("naive",)
    c.eval.num_alphas = 3
    c.eval.train_subset = 64
    c.eval.batch_size = 64
    c.log.trackers = ("tensorboard",)
    return c


def sweep(config):
    for k in config.instability.spawn_steps:
        yield {"instability.spawn_steps": (k,)}
"""


_POPEN = subprocess.Popen
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tiny_png(self, buf, **_):
    buf.write(PNG_SIGNATURE)


def _popen(cmd, *args, **kwargs):
    """A point's `lmc run` in this process; anything else (git, ...) as usual."""
    if list(cmd[1:3]) == ["-m", "lmc.cli"]:
        return _InProcess(cmd, **kwargs)
    return _POPEN(cmd, *args, **kwargs)


class _InProcess:
    """`subprocess.Popen([python, "-m", "lmc.cli", "run", ...])` run to completion here,
    its output written to the point's log file as the subprocess's would be."""

    def __init__(self, cmd, *, stdout, **_):
        text = io_lib.TextIOWrapper(stdout, write_through=True)  # the log is opened "ab"
        try:
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                self.returncode = cli.main(["lmc", *cmd[3:]])
        finally:
            text.detach()  # the sweep closes its file itself
        self.pid = 0

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode


def test_gcs_sweep_shares_a_parent_pools_its_points_and_reports(
    gcs_root, tmp_path, capsys, monkeypatch
):
    pytest.importorskip("tensorboardX")
    monkeypatch.setattr(sweep.subprocess, "Popen", _popen)
    # Drawing the three figures (each point's and the pooled one) is most of the
    # in-process cost and nothing gs://-specific: test_plots and test_sweep check the
    # figures; here only their bytes' way into the bucket matters.
    monkeypatch.setattr(Figure, "savefig", _tiny_png)
    cfg = tmp_path / "sweep_cfg.py"
    cfg.write_text(CONFIG)
    workdir = f"{gcs_root}/sweep"
    assert cli.main(["lmc", "sweep", f"--config={cfg}", f"--workdir={workdir}"]) == 0
    assert "one shared parent" in capsys.readouterr().err
    points = ["spawn_steps=0", "spawn_steps=5"]
    summary = io.read_json(f"{workdir}/sweep.json")
    assert summary["complete"] and [p["name"] for p in summary["points"]] == [
        "shared_parent",
        *points,
    ]
    # One parent, kept at both spawn steps; the points trained only children from it.
    assert [n for n in io.listdir(f"{workdir}/shared_parent/parent/checkpoints")] == ["0", "5"]
    for name in points:
        assert not io.exists(f"{workdir}/{name}/parent")
        results = io.read_json(f"{workdir}/{name}/results.json")
        assert results["complete"] and results["provenance"]["parent"].startswith("gs://")
        assert io.exists(f"{workdir}/logs/{name}.log")  # copied from the local log dir
    # The pooled result of the sweep: both ks, each from its point.
    pooled = io.read_json(f"{workdir}/results.json")
    assert [p["spawn_step"] for p in pooled["points"]] == [0, 5]
    for point, name in zip(pooled["points"], points, strict=True):
        alone = io.read_json(f"{workdir}/{name}/results.json")["points"]
        assert alone == [point]
    assert io.read_bytes(f"{workdir}/barrier_vs_k.png") == PNG_SIGNATURE
    assert not io.exists(f"{workdir}/.sweep.lock")  # released
    assert cli.main(["lmc", "report", workdir]) == 0
    report = capsys.readouterr().out
    assert "[spawn_step=0]" in report and "[spawn_step=5]" in report
    # TensorBoard event files of a point's child, uploaded to the bucket, read back.
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    run = f"{workdir}/spawn_steps=5/k5/child_0"
    events = [f for f in io.find(f"{workdir}/spawn_steps=5/tensorboard/k5/child_0")]
    assert len(events) == 1 and "tfevents" in events[0]
    local = tmp_path / "events" / events[0].rsplit("/", 1)[-1]
    local.parent.mkdir()
    local.write_bytes(io.read_bytes(events[0]))
    acc = event_accumulator.EventAccumulator(str(local.parent))
    acc.Reload()
    metrics = [json.loads(line) for line in io.read_lines(f"{run}/metrics.jsonl")]
    logged = {e.step: e.value for e in acc.Scalars("train_loss")}
    assert logged == pytest.approx({r["step"]: r["train_loss"] for r in metrics})
