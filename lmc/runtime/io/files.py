"""Workdir files on a local disk or an object store: paths, atomic writes, appends, trees.

Local paths go straight to `os` (same speed as before); `gs://`, `s3://`, `az://` and
`hf://` paths go to the fsspec filesystem that `etils.epath` (and hence Orbax) uses, so
a file this module writes is visible at once to Orbax's own listing and vice versa.

OS failures that the user can fix (no space, no permission, a workdir below a file, a
missing bucket) become `UserError`s that name the path and say what to do; anything
else keeps its original exception and traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

from etils import epath

from lmc.errors import UserError

PathLike = str | os.PathLike | epath.Path


def is_writer() -> bool:
    """True on process 0, the one process that writes outputs in a multi-process run."""
    import jax  # lazily: the path layer itself must not start a JAX backend

    return jax.process_index() == 0


# ---------------------------------------------------------------------- write guards
# Every write, append, removal and move below calls `check_writable(path)` first. The
# workdir lock (`lmc.runtime.io.lock`) registers a guard that raises `LockLost` for a path in
# its workdir once another run has taken the lock over, so a run stops before its next
# write there rather than mixing its files with the new holder's. Orbax's checkpoint
# writes do not pass through here: `lmc.runtime.checkpoint` calls `check_writable` before each.

_write_guards: list[Callable[[str], None]] = []


def add_write_guard(guard: Callable[[str], None]) -> None:
    """Call `guard(path)` before every write through this module (it raises to refuse)."""
    _write_guards.append(guard)


def remove_write_guard(guard: Callable[[str], None]) -> None:
    with contextlib.suppress(ValueError):
        _write_guards.remove(guard)


def check_writable(p: PathLike) -> None:
    """Raise if a registered guard refuses writes to `p` (a lost workdir lock)."""
    if _write_guards:
        s = os.fspath(p)
        for guard in tuple(_write_guards):
            guard(s)


# ----------------------------------------------------------------------------- paths


def path(p: PathLike) -> epath.Path:
    """A path object for a local path or a URL (`gs://bucket/dir`, `s3://...`): the
    pathlib API (`/`, `.name`, `.parent`, `.exists()`, `.read_text()`, ...), and what
    Orbax's `CheckpointManager` takes."""
    if isinstance(p, epath.Path):
        return p
    return epath.Path(os.fspath(p))


def scheme(p: PathLike) -> str | None:
    """`"gs"` for `gs://b/x`; None for a local path."""
    s = os.fspath(p)
    return s.split("://", 1)[0] if "://" in s else None


def is_remote(p: PathLike) -> bool:
    """True for object-store URLs (no POSIX semantics: no rename, no append, no flock)."""
    return scheme(p) is not None


def absolute(p: PathLike) -> epath.Path:
    """Local paths made absolute (Orbax and tensorstore need that); URLs as they are."""
    return path(p) if is_remote(p) else path(os.path.abspath(os.fspath(p)))


_FSSPEC_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


def _fs(p: PathLike):
    """The fsspec filesystem epath uses for this URL (one shared instance per scheme)."""
    from etils.epath import backend

    s = os.fspath(p)
    package = _FSSPEC_PACKAGES.get(scheme(s) or "")
    if package is None:
        raise UserError(
            f"{s}: unsupported URL scheme; use a local path or one of "
            + ", ".join(f"{k}://" for k in _FSSPEC_PACKAGES)
        )
    try:
        __import__(package)
    except ImportError as e:
        extra = " (pip install 'lmc[gcs]')" if package == "gcsfs" else ""
        raise UserError(f"{s} needs the {package} package: pip install {package}{extra}") from e
    return backend.fsspec_backend.fs(s)


def _fresh(p: PathLike):
    """The filesystem, with its listing cache for `p` dropped: another host (or an Orbax
    thread) may have written there since we last listed."""
    fs = _fs(p)
    fs.invalidate_cache(os.fspath(p))
    return fs


def exists(p: PathLike) -> bool:
    if is_remote(p):
        return _fresh(p).exists(os.fspath(p))
    return os.path.exists(p)


def is_dir(p: PathLike) -> bool:
    if is_remote(p):
        return _fresh(p).isdir(os.fspath(p))
    return os.path.isdir(p)


def is_file(p: PathLike) -> bool:
    if is_remote(p):
        return _fresh(p).isfile(os.fspath(p))
    return os.path.isfile(p)


def listdir(p: PathLike) -> list[str]:
    """Sorted names of the entries of directory `p`; [] if it does not exist."""
    s = os.fspath(p)
    if is_remote(p):
        try:
            entries = _fresh(p).ls(s, detail=False)
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries} - {""})
    try:
        return sorted(os.listdir(s))
    except FileNotFoundError:
        return []


def find(p: PathLike) -> list[str]:
    """Every file below directory `p`, as sorted paths (URLs keep their scheme)."""
    s = os.fspath(p)
    if is_remote(p):
        prefix = s.split("://", 1)[0] + "://"
        return sorted(prefix + f for f in _fresh(p).find(s))
    out = []
    for root, _, names in os.walk(s):
        out.extend(os.path.join(root, n) for n in names)
    return sorted(out)


def makedirs(p: PathLike) -> epath.Path:
    """Create directory `p` with its parents (object stores: check that no object is in
    the way and that the bucket exists; they have no directories to create)."""
    s = os.fspath(p)
    check_writable(s)
    if is_remote(p):
        fs = _fresh(p)
        bucket_end = s.index("://") + 3
        parts = s[bucket_end:].strip("/").split("/")
        with os_errors(p, "creating the directory"):
            if not fs.exists(s[:bucket_end] + parts[0]):
                raise UserError(
                    f"Cannot use {s}: bucket {s[:bucket_end] + parts[0]} does not exist (or "
                    "these credentials cannot see it). Create it, e.g. `gcloud storage buckets "
                    "create`, or fix the bucket name in --workdir."
                )
            for i in range(2, len(parts) + 1):
                prefix = s[:bucket_end] + "/".join(parts[:i])
                if fs.isfile(prefix):
                    raise UserError(_below_a_file(s, prefix))
        return path(p)
    with os_errors(p, "creating the directory"):
        os.makedirs(s, exist_ok=True)
    return path(p)


# ------------------------------------------------------------------ reading, writing


def read_bytes(p: PathLike) -> bytes:
    if is_remote(p):
        return _fresh(p).cat_file(os.fspath(p))
    with open(p, "rb") as f:
        return f.read()


def read_text(p: PathLike) -> str:
    return read_bytes(p).decode()


def read_json(p: PathLike):
    """The parsed JSON in `p` (FileNotFoundError, or ValueError for a corrupt file)."""
    return json.loads(read_bytes(p))


def write_bytes_atomic(p: PathLike, data: bytes, *, any_process: bool = False) -> None:
    """Replace `p` with `data` so that readers see the old file or the whole new one.

    Local: a temp file in the same directory, fsync, rename. Object stores: one object
    upload, which is atomic there (a failed upload leaves the old object). Only process
    0 writes, the others return at once; `any_process=True` writes from whichever
    process calls (and never asks JAX for the process index, which would start a
    backend: the sweep driver must not claim devices)."""
    if not any_process and not is_writer():
        return
    _write_bytes_atomic(p, bytes(data))


def write_text_atomic(p: PathLike, text: str, *, any_process: bool = False) -> None:
    write_bytes_atomic(p, text.encode(), any_process=any_process)


def write_json_atomic(p: PathLike, obj, *, any_process: bool = False) -> None:
    text = json.dumps(obj, indent=1, sort_keys=False) + "\n"
    write_bytes_atomic(p, text.encode(), any_process=any_process)


def _write_bytes_atomic(p: PathLike, data: bytes) -> None:
    """write_bytes_atomic on every process (for callers that already checked)."""
    s = os.fspath(p)
    check_writable(s)
    if is_remote(p):
        with os_errors(p, "writing it"):
            _fs(p).pipe_file(s, data)
        return
    parent = os.path.dirname(os.path.abspath(s))
    with os_errors(p, "writing it"):
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(s)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are for everyone to read
            os.replace(tmp, s)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


# -------------------------------------------------------------------------- JSON lines
# Object stores cannot append. Each flush rewrites the whole object (one atomic upload),
# so `metrics.jsonl` stays one ordinary file every tool can read and never holds a
# half line. That costs O(file size) per flush, fine for metrics (a line per logging
# step, kilobytes to a few MB), and GCS allows about one update per second per object,
# so `LineWriter` flushes at most every `min_interval_s` and on `flush()`/`close()`.
# Lines written since the last flush are lost in a crash; the engine resumes from its
# last checkpoint and rewrites the metrics after it anyway (flush before checkpointing).


def read_lines(p: PathLike) -> list[str]:
    """The complete lines of `p`, without newlines; a last line without its newline (a
    crash mid-append) is dropped. [] if `p` does not exist."""
    try:
        text = read_text(p)
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return lines[:-1]  # the piece after the last newline: "" or an unfinished line


def append_lines(p: PathLike, lines: Iterable[str], *, any_process: bool = False) -> None:
    """Append complete lines to `p` (process 0 only, unless `any_process`). For many
    appends use `LineWriter`, which on object stores does not re-read the file each time."""
    if not any_process and not is_writer():
        return
    with LineWriter(p, min_interval_s=float("inf"), writer=True) as w:
        for line in lines:
            w.write(line)


class LineWriter:
    """Appends lines to a file: local files in append mode, each line flushed and
    fsync'd at once; object stores by rewriting the object (see above). A half line left at the
    end by a crash is cut off before the first append. A no-op where `writer` is false
    (default: not process 0)."""

    def __init__(self, p: PathLike, *, min_interval_s: float = 5.0, writer: bool | None = None):
        self.path = path(p)
        self.min_interval_s = min_interval_s
        self.writer = is_writer() if writer is None else writer
        self._f = None
        self._pending: list[str] = []
        self._content = b""
        self._last_upload = 0.0
        if not self.writer:
            return
        if is_remote(p):
            try:
                self._content = read_bytes(p)
            except FileNotFoundError:
                self._content = b""
            self._content = self._content[: self._content.rfind(b"\n") + 1]
            self._last_upload = time.monotonic()
            return
        s = os.fspath(p)
        with os_errors(p, "opening it to append"):
            os.makedirs(os.path.dirname(os.path.abspath(s)), exist_ok=True)
            self._f = open(s, "ab")  # noqa: SIM115 (closed in close())
            _cut_partial_last_line(self._f)

    def write(self, line: str | dict) -> None:
        if not self.writer:
            return
        if isinstance(line, dict):
            line = json.dumps(line)
        if "\n" in line:
            raise ValueError(f"one line at a time, got {line!r}")
        check_writable(self.path)
        if self._f is None:
            self._pending.append(line)
            if time.monotonic() - self._last_upload >= self.min_interval_s:
                self.flush()
            return
        data = (line + "\n").encode()
        size = self._f.tell()
        with os_errors(self.path, "appending to it"):
            try:
                self._f.write(data)
                self._f.flush()
                os.fsync(self._f.fileno())  # a line survives a crash of the machine too
            except OSError:
                # Leave no half line behind (e.g. the disk filled up mid-write).
                with contextlib.suppress(OSError):
                    self._f.truncate(size)
                raise

    def flush(self) -> None:
        if not self.writer:
            return
        if self._f is not None:
            with os_errors(self.path, "appending to it"):
                self._f.flush()
                os.fsync(self._f.fileno())
            return
        if not self._pending:
            return
        content = self._content + "".join(line + "\n" for line in self._pending).encode()
        _write_bytes_atomic(self.path, content)
        self._content, self._pending = content, []
        self._last_upload = time.monotonic()

    def close(self) -> None:
        if not self.writer:
            return
        try:
            self.flush()
        finally:
            if self._f is not None:
                self._f.close()
                self._f = None

    def __enter__(self) -> LineWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cut_partial_last_line(f) -> None:
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    with open(f.name, "rb") as r:
        pos = end
        while pos > 0:
            step = min(4096, pos)
            r.seek(pos - step)
            chunk = r.read(step)
            if chunk.endswith(b"\n") and pos == end:
                return
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(pos - step + i + 1)
                return
            pos -= step
    f.truncate(0)


# ------------------------------------------------------------------------------ trees


def remove(p: PathLike, missing_ok: bool = True) -> None:
    """Remove one file."""
    check_writable(p)
    try:
        with os_errors(p, "removing it"):
            if is_remote(p):
                _fresh(p).rm_file(os.fspath(p))
            else:
                os.unlink(p)
    except FileNotFoundError:
        if not missing_ok:
            raise


def remove_tree(p: PathLike, missing_ok: bool = True) -> None:
    """Remove a directory and everything below it (a file is removed too)."""
    s = os.fspath(p)
    check_writable(s)
    try:
        with os_errors(p, "removing it"):
            if is_remote(p):
                fs = _fresh(p)
                files = fs.find(s)
                if not files and not fs.exists(s):
                    raise FileNotFoundError(s)
                if files:
                    fs.rm(files)
                fs.invalidate_cache(s)
            elif os.path.isdir(s) and not os.path.islink(s):
                shutil.rmtree(s)
            else:
                os.unlink(s)
    except FileNotFoundError:
        if not missing_ok:
            raise


def move_tree(src: PathLike, dst: PathLike) -> None:
    """Move a directory to `dst`, replacing what is there. Local: one rename. Object
    stores have no rename: every object is copied server-side, then the source deleted
    (a crash in between leaves both copies, never a partial source)."""
    s, d = os.fspath(src), os.fspath(dst)
    check_writable(s)
    check_writable(d)
    with os_errors(dst, "moving a directory there"):
        if is_remote(src) or is_remote(dst):
            if scheme(src) != scheme(dst):
                raise ValueError(f"cannot move {s} to {d}: different filesystems")
            remove_tree(dst)
            fs = _fresh(src)
            files = fs.find(s)
            root = fs._strip_protocol(s).rstrip("/") + "/"
            for f in files:
                fs.copy(f, d.rstrip("/") + "/" + f[len(root) :])
            if files:
                fs.rm(files)
            fs.invalidate_cache(s)
            fs.invalidate_cache(d)
            return
        remove_tree(dst)
        os.makedirs(os.path.dirname(os.path.abspath(d)), exist_ok=True)
        os.replace(s, d)


# ---------------------------------------------------------------------- OS errors


@contextlib.contextmanager
def os_errors(p: PathLike, doing: str) -> Iterator[None]:
    """Turn OS failures the user can fix into a UserError naming `p`; others propagate."""
    try:
        yield
    except UserError:
        raise
    except OSError as e:
        message = describe_os_error(e, p, doing)
        if message is None:
            raise
        raise UserError(message) from e


def describe_os_error(e: OSError, p: PathLike, doing: str) -> str | None:
    """One paragraph naming `p` and the fix, or None for failures that are not the
    user's to fix (they keep their traceback)."""
    s = os.fspath(p)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"No space left on the device holding {s} while {doing} ({e.strerror}). "
            f"Nothing was replaced: the previous {os.path.basename(s)}, if any, is intact. "
            "Free space there (or raise the quota), or use a --workdir on a disk with room, "
            "then rerun the same command: it resumes from the last checkpoint."
        )
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and not is_remote(p):
        culprit = _first_file_on_the_way(s)
        if culprit is not None:
            return _below_a_file(s, culprit)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = _first_existing(s)
        verb = "read" if doing.startswith("reading") else "write"
        return (
            f"Cannot {verb} {s} while {doing}: {e.strerror}. Use a --workdir you can "
            f"write to, or fix the permissions of {where} (`ls -ld {where}`)."
        )
    creating_dir = doing.startswith("creating") and doing.endswith("directory")
    if (
        creating_dir
        and e.errno in (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP)
        and not is_remote(p)
    ):
        # mkdir below an existing directory fails like this on kernel file systems
        # (/proc, /sys) and on some special mounts: not a bug, a place lmc cannot write.
        where = _first_existing(s)
        return (
            f"Cannot use {s} while {doing}: {e.strerror}, although {where} exists; its "
            "file system does not take new directories (a kernel file system such as /proc "
            "or /sys?). Use a --workdir on an ordinary disk."
        )
    if is_remote(p) and str(e).startswith("Forbidden"):
        return (
            f"Permission denied on {s} while {doing}. Check the credentials on this host "
            "(`gcloud auth application-default login`, or a service account allowed to "
            "create and delete objects in the bucket), or use another --workdir."
        )
    return None


def _below_a_file(s: str, culprit: str) -> str:
    return (
        f"Cannot create {s}: {culprit} is a file, not a directory. Use a --workdir that "
        f"is not below an existing file, or move {culprit} away."
    )


def _first_file_on_the_way(s: str) -> str | None:
    """The path itself or its nearest existing ancestor, if that is not a directory."""
    p = os.path.abspath(s)
    while True:
        if os.path.lexists(p):
            return None if os.path.isdir(p) else p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def _first_existing(s: str) -> str:
    p = os.path.abspath(s)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p
