"""The one path layer for workdir files: local directories and object stores alike.

`--workdir` may be a local path or a URL (`gs://bucket/run`; also `s3://`, `az://`,
`hf://`). Every workdir file goes through this package: paths (`path`), reads, atomic
writes, JSON-lines appends, trees, the one-run-per-workdir lock (`lmc.io.lock`), and
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

Phase 2 (wiring into the engine as landed in main acc5e42; the call sites that still
use pathlib/os directly, from grepping `open(`, `Path(`, `.mkdir`, `os.replace`,
`shutil`, `write_text`, `read_text`, `exists`, `iterdir`, `glob` in lmc/):
- experiments/__init__.py:62 `prepare(Path(workdir), ...)` -> `io.path`; wrap
  prepare+run in `io.lock.workdir_lock(workdir)` (process 0 only; others pass).
- experiments/workdir.py prepare: `Path`, `exists()/is_dir()` -> `io.is_dir`/`io.exists`,
  the `--overwrite` wipe (`iterdir` + `shutil.rmtree`/`unlink`) -> `io.listdir` +
  `io.remove_tree`, `workdir.mkdir` -> `io.makedirs` (gives the below-a-file error); a
  corrupt config.json (`read_json` raises ValueError) should name the file.
- experiments/pair.py:41, instability.py:86, width.py:71/87, merge_many.py:90,
  code_vs_prose.py:289 `Path(workdir) / ...` -> `io.path(workdir) / ...`.
- plots.py `_save` (tmp file + `os.replace`) -> `savefig` into BytesIO +
  `io.write_bytes_atomic` (as code_vs_prose.py:343 already does).
- training/loop.py:103/104/121 `Path(run_dir)` -> `io.path`; :179/:181 `mkdir` ->
  `io.makedirs`; :189 MetricsWriter.
- training/metrics_log.py MetricsWriter: `open(path, "a")` -> `io.LineWriter` (flush
  it before each checkpoint save); truncate_after (`exists`, `read_text`, tmp
  `write_text`, `os.replace`) -> `io.read_lines` + `io.write_text_atomic`, then reopen
  the LineWriter (it caches the object's content on object stores).
- training/siblings.py:108/120/141/211 `Path(workdir)` -> `io.path`; :165 and :203
  (`is_dir`, `iterdir`) -> `io.is_dir`/`io.listdir`.
- report.py:16-24 `Path`, `is_dir`, `exists`, `glob("*/results.json")`, `read_text` ->
  `io.is_dir`, `io.listdir` + `io.exists`, `io.read_json`.
- cli/sweep.py:188/262/279 `Path`/`mkdir`, :239 `exists`, :244 `read_text`, :417
  `read_text` -> the same `io` calls; its flock lock (:482) -> `workdir_lock(...,
  what="lmc sweep")` under another file name (`.sweep.lock`): a sweep holds its own
  lock while its points' runs hold theirs. Per-point logs (:322/:335, subprocess
  stdout) must stay local files: a local log dir, copied to the workdir at the end.
- cli/flags.py:102 `os.path.join("runs", ...)` and cli/__init__.py:34 are fine for
  URLs (string joins); configs stay local files.
- checkpoint.py: done here (epath directory, digests, quarantine via `io.move_tree`).

The end-to-end test (phase 2, tests/test_gcs_e2e.py on the `gcs_emulator` fixture): a
subprocess `python -m lmc.cli run --workdir=gs://lmc-test/<id>/run` with a tiny spawn
`pair` (synthetic data, a few hundred steps, checkpoints every 50); poll
`io.listdir(.../child_0/checkpoints)` until a step past the spawn point is committed,
SIGKILL it (no chance to save), rerun the same command (it must take over the dead
pid's lock with a warning and resume from the newest intact step), then `lmc report`
on the URL. The same command into a local tmp dir is the reference: results.json,
every metrics.jsonl and the final checkpoint states (`state_digest`) must be equal,
after dropping timing keys (provenance.wall_s, *_s) and the workdir itself.
"""

from lmc.io.files import (
    LineWriter,
    PathLike,
    absolute,
    append_lines,
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
