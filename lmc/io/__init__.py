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

Phase 2 (wiring into the engine; the call sites that still use pathlib/os directly):
- experiments/__init__.py run_experiment: `Path(workdir)` -> `io.path`; take
  `io.lock.workdir_lock(workdir)` around prepare+run (process 0 only).
- experiments/workdir.py prepare: `Path`, `.exists()/.is_dir()` -> `io.is_dir`, the
  `--overwrite` wipe (`iterdir` + `shutil.rmtree`/`unlink`) -> `io.listdir` +
  `io.remove_tree`, `workdir.mkdir` -> `io.makedirs` (gives the below-a-file error).
- train.py MetricsWriter: `open(path, "a")` -> `io.LineWriter` (flush before each
  checkpoint save); truncate_after (`read_text`, `with_suffix(".tmp")`, `os.replace`)
  -> `io.read_lines` + `io.write_text_atomic` and reopen the LineWriter; train()
  `Path(run_dir).mkdir` -> `io.makedirs`.
- spawn.py `_has_checkpoint` (`is_dir`, `iterdir`) -> `io.listdir`; `Path(workdir)`
  and the `(... / str(final)).is_dir()` checks -> `io.path`/`io.is_dir`.
- population.py `Path(run_dir)` -> `io.path`.
- plots.py `_save` (tmp file + `os.replace`) -> `savefig` into BytesIO +
  `io.write_bytes_atomic` (as lm_code_vs_prose already does).
- report.py `Path(directory)`, `glob("*/results.json")`, `read_text` -> `io.listdir`
  + `io.read_json`/`io.read_text`.
- sweep.py `_read_json`, `_write_json_atomic` (-> `io.write_json_atomic(...,
  any_process=True)`: lmc.io no longer starts JAX on import), `mkdir`, status `exists`;
  its flock lock stays local-only or becomes `workdir_lock(..., what="lmc sweep")`
  with a separate lock name; the per-point logs (`open(log, "ab")` for subprocess
  output) must stay local files: write them to a local log dir and copy at the end.
- cli.py: catch nothing new (UserError already exits 2); `os.path.join(workdir, ...)`
  in messages is fine for URLs.
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
