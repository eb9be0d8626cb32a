"""A run whose workdir lock is taken over stops before its next write there.

In-process: once the heartbeat finds another run's token (or a write finds its own
last heartbeat older than half the lease and renews it first), every write through
`lmc.runtime.io` below the workdir, a metrics line and a checkpoint save raise `LockLost`
naming the new holder, while writes elsewhere go on. Two real processes: an `lmc run`
is suspended past its lease, another process takes the lock over, and the resumed run
exits with `EXIT_LOCK_LOST` without writing anything more."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmc.errors import EXIT_LOCK_LOST
from lmc.runtime import io
from lmc.runtime.checkpoint import Checkpointer
from lmc.runtime.io import lock as lock_lib
from lmc.runtime.io.lock import LOCK_FILE, LockLost, workdir_lock

pytest_plugins = ["gcs_emulator"]  # the workroot fixture: a local dir, then gs://

ROOT = Path(__file__).resolve().parents[1]


def _take_over(workroot: str, holder: lock_lib.Lock) -> dict:
    """What another run does once `holder`'s lease expired: rewrite the lock with its own
    record (the lock file itself is exempt from the guard, so this process can play it)."""
    record = {**holder.record, "host": "other-host", "pid": 4242, "token": "theirs"}
    io.write_text_atomic(f"{workroot}/{LOCK_FILE}", json.dumps(record) + "\n")
    return record


def test_writes_in_the_workdir_stop_once_the_lock_is_lost(workroot, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    workroot = f"{workroot}/w"
    with workdir_lock(workroot, writer=True, lease_s=60.0, heartbeat_s=0) as held:
        io.write_text_atomic(f"{workroot}/before.txt", "ok")  # ours: writes go through
        metrics = io.LineWriter(f"{workroot}/child_0/metrics.jsonl", writer=True)
        metrics.write('{"step": 1}')
        metrics.flush()
        _take_over(workroot, held)
        assert not lock_lib.heartbeat(held) and held.lost
        refused = {
            "write": lambda: io.write_text_atomic(f"{workroot}/results.json", "{}"),
            "append": lambda: metrics.write('{"step": 2}'),
            "remove": lambda: io.remove(f"{workroot}/before.txt"),
            "remove_tree": lambda: io.remove_tree(f"{workroot}/child_0"),
            "makedirs": lambda: io.makedirs(f"{workroot}/child_1"),
            "move": lambda: io.move_tree(f"{workroot}/child_0", f"{workroot}/moved"),
        }
        for what, write in refused.items():
            with pytest.raises(LockLost) as e:
                write()
            assert "host other-host, pid 4242" in str(e.value), what
            assert "stopped before writing" in str(e.value) and workroot in str(e.value)
        ckpt = Checkpointer(elsewhere / "checkpoints", every_steps=1)
        try:  # outside the workdir: not this lock's business
            assert ckpt.save(1, {"w": np.ones(3, np.float32)}, force=True)
        finally:
            ckpt.close()
        io.write_text_atomic(elsewhere / "note.txt", "fine")
    # Nothing was written, removed or moved after the takeover; the new holder's lock stays.
    assert io.read_text(f"{workroot}/before.txt") == "ok"
    assert io.read_lines(f"{workroot}/child_0/metrics.jsonl") == ['{"step": 1}']
    assert not io.exists(f"{workroot}/results.json") and not io.exists(f"{workroot}/moved")
    assert json.loads(io.read_text(f"{workroot}/{LOCK_FILE}"))["token"] == "theirs"
    io.write_text_atomic(f"{workroot}/after.txt", "released: no guard any more")


def test_a_write_renews_a_stale_lease_itself_and_a_checkpoint_save_is_refused(tmp_path):
    """The heartbeat thread may not have run yet (the process was just resumed): a write
    whose last proof of holding the lock is older than half the lease checks first."""
    workdir = str(tmp_path / "w")
    with workdir_lock(workdir, writer=True, lease_s=60.0, heartbeat_s=0) as held:
        held.confirmed -= 31.0  # as if suspended for more than half the lease
        io.write_text_atomic(f"{workdir}/a.txt", "still ours")  # renewed, then written
        assert not held.lost and time.time() - held.confirmed < 5
        _take_over(workdir, held)
        held.confirmed -= 31.0
        ckpt = Checkpointer(f"{workdir}/child_0/checkpoints", every_steps=1)
        try:
            with pytest.raises(LockLost, match="pid 4242"):
                ckpt.save(1, {"w": np.ones(3, np.float32)}, force=True)
        finally:
            ckpt.close()
        assert held.lost and Checkpointer(f"{workdir}/child_0/checkpoints", 1).steps() == []


_TAKER = """
import sys
from lmc.runtime.io import lock
held = lock.acquire(sys.argv[1])  # the suspended run's lease has expired: taken over
print(held.record["pid"])
"""


def _snapshot(workdir: Path) -> dict:
    return {
        str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in workdir.rglob("*")
        if p.is_file() and p.name != LOCK_FILE
    }


def test_a_suspended_run_whose_lock_is_taken_over_exits_4_without_writing(tmp_path):
    workdir = tmp_path / "w"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           lock_lib.LEASE_ENV: "2"}  # fmt: skip
    env.pop("XLA_FLAGS", None)
    run = subprocess.Popen(
        [sys.executable, "-m", "lmc.cli", "run", f"--workdir={workdir}",
         "--config.data.name=synthetic", "--config.model.width=16", "--config.model.depth=1",
         "--config.num_steps=100000", "--config.log_every_steps=1", "--config.progress=False",
         "--config.eval.methods=('naive',)", "--config.eval.num_alphas=3"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        metrics = workdir / "child_0" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGSTOP)  # suspended (a stopped VM, a swapped-out host)
        time.sleep(2.5)  # past its 2 s lease
        taker = subprocess.run([sys.executable, "-c", _TAKER, str(workdir)], env=env,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert taker.returncode == 0, taker.stderr
        assert "its lease expired" in taker.stderr
        before = _snapshot(workdir)
        lines = metrics.read_text().count("\n")
        os.kill(run.pid, signal.SIGCONT)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.kill(run.pid, signal.SIGCONT)
            run.kill()
            run.wait()
    assert run.returncode == EXIT_LOCK_LOST, err
    assert "lmc: lock lost:" in err and f"pid {taker.stdout.strip()}" in err, err
    assert "Traceback" not in err
    # Nothing new: only a metrics line already being written when it was suspended may
    # complete (it passed its check before the takeover).
    after = _snapshot(workdir)
    assert after.keys() == before.keys()
    assert metrics.read_text().count("\n") - lines <= 1
    assert {k: v for k, v in after.items() if k != "child_0/metrics.jsonl"} == {
        k: v for k, v in before.items() if k != "child_0/metrics.jsonl"
    }
    assert not (workdir / "results.json").exists()
    record = json.loads((workdir / LOCK_FILE).read_text())
    assert record["pid"] == int(taker.stdout)  # the new holder's lock is left alone
