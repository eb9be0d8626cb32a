"""One run per workdir (lmc.runtime.io.lock), on a local directory and on gs:// (the emulator):
a second holder is refused naming the first, from this process and from another one; a
dead holder's lock and an expired lease are taken over with a warning; a live holder's
heartbeat keeps its lease."""

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lmc.errors import UserError
from lmc.runtime import io
from lmc.runtime.io import lock as lock_lib
from lmc.runtime.io.lock import LOCK_FILE, workdir_lock

pytest_plugins = ["gcs_emulator"]  # the gcs_root and workroot fixtures

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.fixture(autouse=True)
def _lmc_logs_reach_caplog():
    """An in-process `lmc run` earlier in this worker stops lmc's logs at the "lmc"
    logger (lmc.cli.flags.quiet_libraries); caplog listens at the root. (Not through
    monkeypatch: some tests here call monkeypatch.undo().)"""
    logger = logging.getLogger("lmc")
    saved, logger.propagate = logger.propagate, True
    yield
    logger.propagate = saved


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
