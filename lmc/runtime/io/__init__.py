"""The one path layer for workdir files: local directories and object stores alike.

`--workdir` may be a local path or a URL (`gs://bucket/run`; also `s3://`, `az://`,
`hf://`). Every workdir file goes through this package: paths (`path`), reads, atomic
writes, JSON-lines appends, trees, the one-run-per-workdir lock (`lmc.runtime.io.lock`), and
OS failures reported as `UserError`s that name the path and the fix.

Why `etils.epath` (over fsspec used directly): it is already installed with Orbax and
is the path type Orbax's `CheckpointManager` takes, so checkpoints, digests and every
other workdir file share one path object and, for URLs, one fsspec filesystem instance
(and its listing cache). It has the pathlib API the engine's `Path` code already uses,
and local paths go to `os` without fsspec in between (local runs are not slowed down).
For what epath does not cover (atomic local replace, appends, GCS preconditions for the
lock) this package drops to `os` or to that same fsspec filesystem.

Atomicity: local writes go to a temp file, fsync, rename. An object store has no
rename, but one object upload is atomic (a reader sees the old object or the whole new
one; a failed upload leaves the old one), so a single-file write is one upload. Outputs
made of many objects need a final marker written last: Orbax checkpoints on gs:// get
`commit_success.txt` from Orbax itself; `results.json` with `"complete": true` is the
marker of a run. Appends: see `LineWriter` (object stores rewrite the object).

gs:// needs `gcsfs` (the `gcs` extra: `pip install 'lmc[gcs]'`) and credentials on
every host; nothing mounted. Tests run against `gcp-storage-emulator`
(`tests/gcs_emulator.py`).

Where the engine uses it: `lmc.experiments.run_experiment` holds the workdir lock
(process 0) around everything and writes results.json; `experiments.workdir.prepare`
reads and writes config.json (a corrupt one is a UserError naming it); the training
loop creates run dirs and writes metrics.jsonl through `LineWriter`
(`training.metrics_log`, flushed before every checkpoint); `lmc.runtime.checkpoint` gives
Orbax epaths and keeps digests and the quarantine here; plots are drawn into memory
and written with `write_bytes_atomic`; `lmc.cli.report` lists runs with `listdir`; `lmc
sweep` keeps its `.sweep.lock`, sweep.json and point states here (the points' logs
are local files while a point runs, copied to an object-store workdir when it stops).
Config files stay local files. While a run holds the workdir lock, every write here
into the workdir first passes the lock's guard (`check_writable`): once another run
has taken the lock over, it raises `lmc.runtime.io.lock.LockLost` instead (exit code 4). `tests/e2e/test_gcs_e2e.py` runs, kills, resumes and
reports a spawn pair on gs:// (the emulator) and compares it bitwise with a local run.
"""

from lmc.runtime.io.files import (
    LineWriter,
    PathLike,
    absolute,
    append_lines,
    check_writable,
    describe_os_error,
    exists,
    find,
    is_dir,
    is_file,
    is_remote,
    is_writer,
    listdir,
    makedirs,
    move_tree,
    os_errors,
    path,
    read_bytes,
    read_json,
    read_lines,
    read_text,
    remove,
    remove_tree,
    scheme,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

__all__ = [
    "LineWriter",
    "PathLike",
    "absolute",
    "append_lines",
    "check_writable",
    "describe_os_error",
    "exists",
    "find",
    "is_dir",
    "is_file",
    "is_remote",
    "is_writer",
    "listdir",
    "makedirs",
    "move_tree",
    "os_errors",
    "path",
    "read_bytes",
    "read_json",
    "read_lines",
    "read_text",
    "remove",
    "remove_tree",
    "scheme",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
