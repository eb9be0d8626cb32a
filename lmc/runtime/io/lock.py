"""One run per workdir: `with workdir_lock(workdir): ...`.

The lock is a small JSON file `WORKDIR/.lmc.lock` naming its holder (host, pid, start
time) and a lease: the holder rewrites it every `lease_s / 4` seconds from a background
thread (`heartbeat`). Another run finds it and is refused with a UserError naming the
holder, unless the lock is stale, in which case it takes the lock over with a warning:

- the holder ran on this host and its pid is gone (a killed run), or
- the lease expired: no heartbeat for `lease_s` (a holder on another host that died;
  that test compares clocks across hosts, which NTP keeps within far less than a lease).

Check-and-set is atomic so two runs starting together cannot both win:
- local (and NFS) directories: the read-decide-write happens under `flock` on the lock
  file; the holder does not keep the flock (it would not survive on every shared
  filesystem, and the record must outlive crashes to be reported);
- GCS: object generations. Creating uses `ifGenerationMatch=0`, a takeover or a
  heartbeat `ifGenerationMatch=<the generation read>`, so of two writers racing one
  gets HTTP 412 and loses (tested against tests/gcs_emulator.py, which honours the
  preconditions that the stock gcp-storage-emulator ignores);
- other object stores (s3://, ...): write, then read back and check the token; a
  narrower but nonzero race window.

A holder whose lock is taken over (it was suspended, or cut off from the store, for
longer than its lease) must not write again: while held, the lock guards every write
through `lmc.runtime.io` below its workdir (and `lmc.runtime.checkpoint` checks before each save).
Before a write the guard raises `LockLost`, naming the new holder, once `Lock.lost` is
set (by a heartbeat that found another run's token), and it first renews the lease
itself when the last confirmed heartbeat is older than half the lease (the heartbeat
thread may be behind, e.g. right after the process was resumed from a suspension). The
CLI exits with `EXIT_LOCK_LOST` (4). What is not covered: a write already under way
when the process was suspended completes when it resumes.

The lease: `lease_s` (by default 120 s; the environment variable `LMC_LOCK_LEASE_S`
overrides the default, e.g. longer for hosts that are suspended for minutes).

Multi-process runs: only the writer (process 0) takes the lock (`writer=`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from lmc.errors import UserError
from lmc.runtime.io import files

log = logging.getLogger(__name__)

LOCK_FILE = ".lmc.lock"
LEASE_ENV = "LMC_LOCK_LEASE_S"
DEFAULT_LEASE_S = 120.0


class LockLost(RuntimeError):
    """Another run took over this run's workdir lock; this run must stop writing."""


def default_lease_s() -> float:
    """The lease: `LMC_LOCK_LEASE_S` if set, else 120 s."""
    raw = os.environ.get(LEASE_ENV, "")
    if not raw:
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{LEASE_ENV}={raw!r} must be a positive number of seconds")
    return value


@dataclass
class Lock:
    """A held workdir lock: its file and this holder's record."""

    path: str
    record: dict
    lease_s: float
    lost: bool = False
    confirmed: float = 0.0  # time.time() of the last write that proved the lock ours
    _generation: str | None = None  # GCS object generation of our last write
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    # One heartbeat at a time: the background thread and a write's own renewal (on GCS
    # two concurrent rewrites from one holder would fail each other's precondition).
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    @property
    def workdir(self) -> str:
        return self.path.rsplit("/", 1)[0]

    def guard(self, path: str) -> None:
        """Raise LockLost before a write to `path` in this lock's workdir once the lock is
        lost; renew it first if our last proof of holding it is older than half a lease."""
        if path == self.path or not _inside(path, self.workdir):
            return
        stale = time.time() - self.confirmed > self.lease_s / 2
        if stale and not self.lost and not self._stop.is_set():  # _stop: being released
            try:
                heartbeat(self)
            except Exception as e:  # transient: the next write or heartbeat tries again
                log.warning("could not renew the lock %s: %s", self.path, e)
        if self.lost:
            raise LockLost(_lost_message(self, path))


@contextlib.contextmanager
def workdir_lock(
    workdir: files.PathLike,
    *,
    writer: bool | None = None,
    lease_s: float | None = None,
    heartbeat_s: float | None = None,
    what: str = "lmc run",
    name: str = LOCK_FILE,
) -> Iterator[Lock | None]:
    """Hold the workdir's lock for the block (yields the Lock; None where `writer` is
    false, default: not process 0). Raises UserError if a live run holds it. `name`
    is the lock file's name in the workdir (a sweep holds `.sweep.lock` while each of
    its points' runs holds its own point's `.lmc.lock`). Writes through `lmc.runtime.io` into
    the workdir raise LockLost once another run has taken the lock over."""
    if not (files.is_writer() if writer is None else writer):
        yield None
        return
    lease_s = default_lease_s() if lease_s is None else lease_s
    lock = acquire(workdir, lease_s=lease_s, what=what, name=name)
    files.add_write_guard(lock.guard)
    interval = lease_s / 4 if heartbeat_s is None else heartbeat_s
    if interval > 0:
        lock._thread = threading.Thread(
            target=_heartbeat_loop, args=(lock, interval), name="lmc-lock-heartbeat", daemon=True
        )
        lock._thread.start()
    try:
        yield lock
    finally:
        release(lock)


def acquire(
    workdir: files.PathLike,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    what: str = "lmc run",
    name: str = LOCK_FILE,
) -> Lock:
    """Take the lock (no heartbeat thread and no write guard; call `heartbeat` yourself,
    then `release`)."""
    files.makedirs(workdir)
    path = os.fspath(files.path(workdir) / name)
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": what,
        "token": uuid.uuid4().hex,
        "lease_s": lease_s,
        "heartbeat": time.time(),
    }
    lock = Lock(path=path, record=record, lease_s=lease_s)
    if files.scheme(path) == "gs":
        _acquire_gcs(lock)
    elif files.is_remote(path):
        _acquire_object_store(lock)
    else:
        _acquire_local(lock)
    lock.confirmed = record["heartbeat"]
    return lock


def heartbeat(lock: Lock) -> bool:
    """Renew the lease; False (and `lock.lost`) if another run has taken the lock."""
    with lock._mutex:
        if lock.lost:
            return False
        now = time.time()
        lock.record["heartbeat"] = now
        if files.scheme(lock.path) == "gs":
            ok = _heartbeat_gcs(lock)
        elif files.is_remote(lock.path):
            current = _read_record(lock.path)
            ok = current is not None and current.get("token") == lock.record["token"]
            if ok:
                files._write_bytes_atomic(lock.path, _encode(lock.record))
        else:
            with _flocked(lock.path) as fd:
                current = _parse(os.pread(fd, 1 << 16, 0))
                ok = current is not None and current.get("token") == lock.record["token"]
                if ok:
                    _rewrite(fd, lock.record)
        if ok:
            lock.confirmed = now
            return True
        lock.lost = True
    log.error(
        "the lock %s was taken over by another run (%s); this run no longer owns the "
        "workdir and stops before its next write there",
        lock.path,
        _describe(_read_record(lock.path)),
    )
    return False


def release(lock: Lock) -> None:
    """Stop the heartbeat and remove the lock file if it is still ours."""
    files.remove_write_guard(lock.guard)
    lock._stop.set()
    if lock._thread is not None:
        lock._thread.join()
    if lock.lost:
        return
    if files.scheme(lock.path) == "gs":
        current, _ = _gcs_read(lock)
        if current is None or current.get("token") != lock.record["token"]:
            return
        fs, bucket, key = _gcs(lock.path)
        with contextlib.suppress(FileNotFoundError, FileExistsError):
            fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=lock._generation)
        fs.invalidate_cache(lock.path)
    elif files.is_remote(lock.path):
        current = _read_record(lock.path)
        if current is not None and current.get("token") == lock.record["token"]:
            files.remove(lock.path)
    else:
        with _flocked(lock.path) as fd:
            current = _parse(os.pread(fd, 1 << 16, 0))
            if current is not None and current.get("token") == lock.record["token"]:
                os.unlink(lock.path)


# ----------------------------------------------------------------------- staleness


def stale_reason(record: dict | None, now: float | None = None) -> str | None:
    """Why the lock described by `record` may be taken over, or None if it is held."""
    if record is None:
        return "it is unreadable (a crash while writing it)"
    now = time.time() if now is None else now
    if record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", -1))):
        return f"its process {record.get('pid')} on this host is gone"
    age = now - float(record.get("heartbeat", 0))
    if age > float(record.get("lease_s", 0)):
        return f"its lease expired (no heartbeat for {age:.0f} s)"
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def _describe(record: dict | None) -> str:
    if record is None:
        return "holder unknown"
    return (
        f"host {record.get('host')}, pid {record.get('pid')}, started {record.get('started')}"
        f" ({record.get('command', 'lmc run')})"
    )


def _inside(path: str, workdir: str) -> bool:
    if files.is_remote(path) or files.is_remote(workdir):
        return path == workdir or path.startswith(workdir.rstrip("/") + "/")
    path, workdir = os.path.abspath(path), os.path.abspath(workdir)
    return path == workdir or path.startswith(workdir.rstrip(os.sep) + os.sep)


def _lost_message(lock: Lock, path: str) -> str:
    try:
        holder = _describe(_read_record(lock.path))
    except Exception as e:  # the store is unreachable: say what we know
        holder = f"holder not readable: {e}"
    command = lock.record.get("command", "lmc run")
    return (
        f"this `{command}` lost its workdir lock {lock.path}: another run took it over "
        f"({holder}); a run takes over a lock whose lease ({lock.lease_s:g} s) expired, so "
        "this one was suspended or cut off from the filesystem for that long. It stopped "
        f"before writing {path}; the workdir "
        "now belongs to the other run. Let that run finish, or stop it and rerun this "
        "command to resume from the last checkpoint."
    )


def _refuse(lock: Lock, holder: dict) -> UserError:
    workdir = lock.path.rsplit("/", 1)[0]
    command = (holder or {}).get("command", "lmc run")
    return UserError(
        f"another `{command}` is running on {workdir}: {_describe(holder)}. Wait for it to "
        f"finish or stop it, or use another --workdir. If that run is dead (its host is "
        f"gone), its lock {lock.path} expires {holder.get('lease_s', '?')} s after its "
        "last heartbeat and is then taken over automatically; you may also delete it."
    )


def _take_over_warning(lock: Lock, holder: dict | None, why: str) -> None:
    log.warning("taking over the lock %s (%s): %s", lock.path, _describe(holder), why)


def _encode(record: dict) -> bytes:
    return (json.dumps(record) + "\n").encode()


def _parse(data: bytes) -> dict | None:
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _read_record(path: str) -> dict | None:
    try:
        return _parse(files.read_bytes(path))
    except FileNotFoundError:
        return None


def _heartbeat_loop(lock: Lock, interval: float) -> None:
    while not lock._stop.wait(interval):
        try:
            if not heartbeat(lock):
                return
        except Exception as e:  # a transient network error must not kill the thread
            log.warning("could not renew the lock %s: %s", lock.path, e)


# --------------------------------------------------------------------- local files


@contextlib.contextmanager
def _flocked(path: str) -> Iterator[int]:
    """An fd of the lock file, exclusively flock'ed; the file exists while held."""
    while True:
        with files.os_errors(path, "creating the lock file"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A releaser may have unlinked the file while we waited: then retry on the
            # new one, or two runs would each hold a different inode.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)


def _rewrite(fd: int, record: dict) -> None:
    data = _encode(record)
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _acquire_local(lock: Lock) -> None:
    with _flocked(lock.path) as fd:
        raw = os.pread(fd, 1 << 16, 0)
        if raw:
            holder = _parse(raw)
            why = stale_reason(holder)
            if why is None:
                raise _refuse(lock, holder)
            _take_over_warning(lock, holder, why)
        with files.os_errors(lock.path, "writing the lock file"):
            _rewrite(fd, lock.record)


# ----------------------------------------------------------------------------- GCS


def _gcs(path: str):
    fs = files._fs(path)
    bucket, key, _ = fs.split_path(path)
    return fs, bucket, key


def _gcs_read(lock: Lock) -> tuple[dict | None, str | None]:
    """(record, generation) of the lock object, (None, None) if there is none."""
    fs, bucket, key = _gcs(lock.path)
    try:
        meta = fs.call("GET", "b/{}/o/{}", bucket, key, json_out=True)
        _, data = fs.call(
            "GET", "b/{}/o/{}", bucket, key, alt="media", generation=meta["generation"]
        )
    except FileNotFoundError:
        return None, None
    return _parse(data) or {}, meta["generation"]


def _gcs_write(lock: Lock, if_generation: str) -> None:
    """Upload our record unless the object's generation changed (FileExistsError)."""
    fs, bucket, key = _gcs(lock.path)
    out = fs.call(
        "POST",
        f"{fs._location}/upload/storage/v1/b/{bucket}/o",
        uploadType="media",
        name=key,
        ifGenerationMatch=if_generation,
        data=_encode(lock.record),
        # Not application/json: the emulator would parse the body instead of storing it.
        headers={"Content-Type": "application/octet-stream"},
        json_out=True,
    )
    lock._generation = str(out["generation"])
    fs.invalidate_cache(lock.path)


def _acquire_gcs(lock: Lock) -> None:
    for _ in range(3):
        holder, generation = _gcs_read(lock)
        if generation is not None:
            why = stale_reason(holder or None)
            if why is None:
                raise _refuse(lock, holder)
            _take_over_warning(lock, holder, why)
        try:
            with files.os_errors(lock.path, "writing the lock file"):
                _gcs_write(lock, generation or "0")
        except FileExistsError:  # HTTP 412: another run wrote it first; look again
            continue
        current, _ = _gcs_read(lock)
        if current is not None and current.get("token") == lock.record["token"]:
            return
    holder, _ = _gcs_read(lock)
    raise _refuse(lock, holder or {})


def _heartbeat_gcs(lock: Lock) -> bool:
    # The precondition alone decides on GCS; the read first spares a request (and keeps
    # a taken-over lock safe on a GCS-like store that does not enforce preconditions).
    current, _ = _gcs_read(lock)
    if current is None or current.get("token") != lock.record["token"]:
        return False
    try:
        _gcs_write(lock, lock._generation)
    except FileExistsError:  # HTTP 412: rewritten since our last write
        return False
    return True


# ------------------------------------------------- other object stores (s3://, ...)


def _acquire_object_store(lock: Lock) -> None:
    holder = _read_record(lock.path) if files.exists(lock.path) else None
    if files.exists(lock.path):
        why = stale_reason(holder)
        if why is None:
            raise _refuse(lock, holder)
        _take_over_warning(lock, holder, why)
    files._write_bytes_atomic(lock.path, _encode(lock.record))
    current = _read_record(lock.path)
    if current is None or current.get("token") != lock.record["token"]:
        raise _refuse(lock, current or {})
