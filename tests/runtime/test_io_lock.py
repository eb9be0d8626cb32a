"""One run per workdir (lmc.runtime.io.lock), on a local directory and on gs:// (the emulator):
a second holder is refused naming the first, from this process and from another one; a
dead holder's lock and an expired lease are taken over with a warning; a live holder's
heartbeat keeps its lease.

A run whose workdir lock is taken over stops before its next write there.

In-process: once the heartbeat finds another run's token (or a write finds its own
last heartbeat older than half the lease and renews it first), every write through
`lmc.runtime.io` below the workdir, a metrics line and a checkpoint save raise `LockLost`
naming the new holder, while writes elsewhere go on. Two real processes: an `lmc run`
is suspended past its lease, another process takes the lock over, and the resumed run
exits with `EXIT_LOCK_LOST` without writing anything more."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, subprocess_env, tiny_flags

from lmc.errors import EXIT_LOCK_LOST, UserError
from lmc.runtime import io
from lmc.runtime.checkpoint import Checkpointer
from lmc.runtime.io import lock as lock_lib
from lmc.runtime.io.lock import LOCK_FILE, LockLost, workdir_lock

pytest_plugins = ["gcs_emulator"]  # the gcs_root and workroot fixtures


_CHILD = """
import os, sys
from lmc.errors import UserError
from lmc.runtime.io import lock
try:
    held = lock.acquire(sys.argv[1], what="child")
except UserError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
if sys.argv[2] == "die":
    os._exit(0)  # killed: the lock stays behind, naming a pid that is gone
lock.release(held)
"""


def _child(workdir: str, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", _CHILD, workdir, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_second_holder_is_refused_naming_the_first(workroot):
    with workdir_lock(workroot, writer=True) as held:
        assert io.exists(f"{workroot}/{LOCK_FILE}")
        with pytest.raises(UserError) as e:
            with workdir_lock(workroot, writer=True):
                pass
        message = str(e.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}" in message
        assert f"started {held.record['started']}" in message
        assert workroot in message and "--workdir" in message
    assert not io.exists(f"{workroot}/{LOCK_FILE}")
    with workdir_lock(workroot, writer=True):  # free again
        pass


def test_second_process_is_refused(workroot):
    with workdir_lock(workroot, writer=True):
        r = _child(workroot, "release")
    assert r.returncode == 2, r.stderr
    assert f"pid {os.getpid()}" in r.stderr and "another `lmc run` is running on" in r.stderr
    r = _child(workroot, "release")  # released: the other process gets it
    assert r.returncode == 0, r.stderr


def test_lock_of_a_dead_process_is_taken_over(workroot, caplog):
    r = _child(workroot, "die")
    assert r.returncode == 0, r.stderr
    dead = json.loads(io.read_text(f"{workroot}/{LOCK_FILE}"))
    with workdir_lock(workroot, writer=True) as held:
        assert held.record["pid"] == os.getpid()
    assert f"process {dead['pid']} on this host is gone" in caplog.text
    assert "taking over the lock" in caplog.text


def test_only_the_writer_process_takes_it(workroot):
    with workdir_lock(workroot, writer=False) as held:
        assert held is None
        assert not io.exists(f"{workroot}/{LOCK_FILE}")
        with workdir_lock(workroot, writer=True):
            pass


def _as_other_host(monkeypatch, workroot, **kw):
    """Acquire as if from another host (the pid test does not apply, only the lease)."""
    monkeypatch.setattr(lock_lib.socket, "gethostname", lambda: "other-host")
    held = workdir_lock(workroot, writer=True, **kw)
    lock = held.__enter__()
    monkeypatch.undo()
    return held, lock


def test_heartbeat_keeps_the_lease_and_an_expired_lease_is_taken_over(
    workroot, monkeypatch, caplog
):
    cm, first = _as_other_host(monkeypatch, workroot, lease_s=1.0, heartbeat_s=0.2)
    try:
        time.sleep(1.5)  # longer than the lease: only the heartbeats keep it
        with pytest.raises(UserError, match="host other-host"):
            lock_lib.acquire(workroot)
        first._stop.set()  # the holder hangs (or its host dies): no more heartbeats
        first._thread.join()
        time.sleep(1.2)
        second = lock_lib.acquire(workroot)
        assert "its lease expired" in caplog.text
        assert not lock_lib.heartbeat(first) and first.lost  # the old holder learns it
    finally:
        cm.__exit__(None, None, None)  # and does not delete the new holder's lock
    assert json.loads(io.read_text(f"{workroot}/{LOCK_FILE}"))["token"] == second.record["token"]
    lock_lib.release(second)
    assert not io.exists(f"{workroot}/{LOCK_FILE}")


def test_unreadable_lock_is_taken_over(workroot, caplog):
    io.write_text_atomic(f"{workroot}/{LOCK_FILE}", '{"host": "x", "pid')  # crash mid-write
    with workdir_lock(workroot, writer=True):
        pass
    assert "unreadable" in caplog.text


def test_racing_local_acquirers_one_wins(tmp_path):
    results = []

    def contend():
        try:
            results.append(lock_lib.acquire(tmp_path))
        except UserError as e:
            results.append(e)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, lock_lib.Lock)]
    assert len(winners) == 1 and len(results) == 8
    lock_lib.release(winners[0])


# ---------------------------------------------------------------- GCS preconditions
# The test emulator honours ifGenerationMatch (tests/gcs_emulator.py), so these races
# are decided by the preconditions alone, as on GCS.


def test_racing_gcs_acquirers_one_wins_by_generation_precondition(gcs_root, monkeypatch):
    """Every contender reads "no lock" before anyone writes; then they write one after
    another, each reading back at once. Without preconditions each would read its own
    record back and win; with them every write after the first gets HTTP 412."""
    n = 4
    everyone_read = threading.Barrier(n)
    turns = [threading.Event() for _ in range(n)]
    me = threading.local()
    read, write = lock_lib._gcs_read, lock_lib._gcs_write

    def first_read_together(lock):
        out = read(lock)
        if not getattr(me, "read_once", False):
            me.read_once = True
            everyone_read.wait(timeout=30)
        return out

    def write_in_turn(lock, generation):
        turns[me.index].wait(timeout=30)
        return write(lock, generation)

    monkeypatch.setattr(lock_lib, "_gcs_read", first_read_together)
    monkeypatch.setattr(lock_lib, "_gcs_write", write_in_turn)
    results = [None] * n

    def contend(i):
        me.index = i
        try:
            results[i] = lock_lib.acquire(gcs_root)
        except UserError as e:
            results[i] = e
        finally:
            if i + 1 < n:
                turns[i + 1].set()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    turns[0].set()
    for t in threads:
        t.join(timeout=60)
    winners = [r for r in results if isinstance(r, lock_lib.Lock)]
    assert len(winners) == 1, results
    assert all("another `lmc run` is running" in str(r) for r in results if r is not winners[0])
    stored = json.loads(io.read_text(f"{gcs_root}/{LOCK_FILE}"))
    assert stored["token"] == winners[0].record["token"]
    monkeypatch.undo()
    lock_lib.release(winners[0])
    assert not io.exists(f"{gcs_root}/{LOCK_FILE}")


def test_gcs_heartbeat_and_release_after_a_takeover_are_refused_by_generation(gcs_root):
    held = lock_lib.acquire(gcs_root, lease_s=60.0)
    stale_generation = held._generation
    # Another run takes over with the generation it read (this lock's: the lease expired).
    taker = lock_lib.Lock(path=held.path, record={**held.record, "token": "theirs"},
                          lease_s=60.0)  # fmt: skip
    lock_lib._gcs_write(taker, stale_generation)
    assert taker._generation != stale_generation
    # The old holder's conditional rewrite and delete both fail (HTTP 412) ...
    with pytest.raises(FileExistsError):
        lock_lib._gcs_write(held, stale_generation)
    fs, bucket, key = lock_lib._gcs(held.path)
    with pytest.raises(FileExistsError):
        fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=stale_generation)
    # ... a creation over an existing lock too ...
    with pytest.raises(FileExistsError):
        lock_lib._gcs_write(held, "0")
    # ... so its heartbeat reports the loss and its release leaves the new lock alone.
    assert not lock_lib.heartbeat(held) and held.lost
    lock_lib.release(held)
    assert json.loads(io.read_text(f"{gcs_root}/{LOCK_FILE}"))["token"] == "theirs"


# ------------------------------------------------------------------------- a lost lock


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
    env = subprocess_env(**{lock_lib.LEASE_ENV: "1"})
    run = subprocess.Popen(
        [sys.executable, "-m", "lmc.cli", "run", f"--workdir={workdir}",
         *tiny_flags(**{"model.width": 16, "model.depth": 1, "num_steps": 100000,
                        "log_every_steps": 1, "eval.methods": ("naive",), "eval.num_alphas": 3})],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        metrics = workdir / "child_0" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGSTOP)  # suspended (a stopped VM, a swapped-out host)
        time.sleep(1.25)  # past its 1 s lease
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
