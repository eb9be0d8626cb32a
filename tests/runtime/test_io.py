"""lmc.runtime.io, the path layer: the same calls on a local directory and on gs:// (the GCS
emulator), atomic writes, JSON-lines appends, trees, and OS failures as user errors."""

import errno
import json
import os
import subprocess

import pytest
from etils import epath

from lmc.errors import UserError
from lmc.runtime import io

pytest_plugins = ["gcs_emulator"]  # the gcs_root and workroot fixtures


def test_old_api_takes_str_pathlib_and_epath(tmp_path):
    from lmc.runtime.io import is_writer, read_json, write_bytes_atomic, write_json_atomic

    assert is_writer()
    for i, p in enumerate([str(tmp_path / "a.json"), tmp_path / "b.json", epath.Path(tmp_path)]):
        target = p / "c.json" if isinstance(p, epath.Path) else p
        write_json_atomic(target, {"i": i})
        assert read_json(target) == {"i": i}
        write_bytes_atomic(target, b"[1]")
        assert read_json(target) == [1]
    assert oct(os.stat(tmp_path / "a.json").st_mode & 0o777) == "0o644"


def test_files_and_trees(workroot):
    root = io.path(workroot) / "run"
    io.makedirs(root)
    io.write_json_atomic(root / "results.json", {"complete": True})
    io.write_text_atomic(root / "a" / "b.txt", "hello\n")
    io.write_bytes_atomic(f"{root}/a/c/d.bin", b"\x00\x01")
    assert io.read_json(root / "results.json") == {"complete": True}
    assert io.read_text(root / "a" / "b.txt") == "hello\n"
    assert io.read_bytes(root / "a" / "c" / "d.bin") == b"\x00\x01"
    assert io.listdir(root) == ["a", "results.json"]
    assert io.listdir(root / "a") == ["b.txt", "c"]
    assert io.listdir(root / "missing") == []
    assert io.is_dir(root / "a") and not io.is_file(root / "a")
    assert io.is_file(root / "results.json") and not io.is_dir(root / "results.json")
    assert io.exists(root / "a" / "c") and not io.exists(root / "nothing")
    assert io.find(root / "a") == [f"{root}/a/b.txt", f"{root}/a/c/d.bin"]

    io.write_text_atomic(root / "dst" / "old.txt", "stale")
    io.move_tree(root / "a", root / "dst")
    assert not io.exists(root / "a")
    assert io.find(root / "dst") == [f"{root}/dst/b.txt", f"{root}/dst/c/d.bin"]

    io.remove(root / "results.json")
    io.remove(root / "results.json")  # missing_ok
    with pytest.raises(FileNotFoundError):
        io.remove(root / "results.json", missing_ok=False)
    io.remove_tree(root / "dst")
    assert io.listdir(root) == []
    io.remove_tree(root / "dst")
    with pytest.raises(FileNotFoundError):
        io.remove_tree(root / "dst", missing_ok=False)


def test_replacing_a_file_is_atomic_and_leaves_no_temp_files(workroot):
    target = f"{workroot}/results.json"
    for i in range(3):
        io.write_json_atomic(target, {"i": i})
    assert io.read_json(target) == {"i": 2}
    assert io.listdir(workroot) == ["results.json"]


def test_path_objects_for_urls_and_local_paths(tmp_path):
    p = io.path("gs://bucket/run") / "child_0" / "metrics.jsonl"
    assert os.fspath(p) == "gs://bucket/run/child_0/metrics.jsonl"
    assert p.name == "metrics.jsonl" and os.fspath(p.parent) == "gs://bucket/run/child_0"
    assert io.is_remote(p) and io.scheme(p) == "gs"
    assert not io.is_remote(tmp_path) and io.scheme(tmp_path) is None
    assert os.fspath(io.absolute("gs://bucket/run")) == "gs://bucket/run"
    assert os.fspath(io.absolute("rel")) == os.path.abspath("rel")
    with pytest.raises(UserError, match="unsupported URL scheme"):
        io.exists("ftp://host/x")


# ------------------------------------------------------------------------- JSON lines


def test_json_lines_append_and_read(workroot):
    metrics = f"{workroot}/child_0/metrics.jsonl"
    assert io.read_lines(metrics) == []
    io.append_lines(metrics, [json.dumps({"step": 0})])
    with io.LineWriter(metrics) as w:
        w.write({"step": 10})
        w.write('{"step": 20}')
        with pytest.raises(ValueError, match="one line"):
            w.write("a\nb")
    io.append_lines(metrics, ['{"step": 30}'])
    assert [json.loads(line)["step"] for line in io.read_lines(metrics)] == [0, 10, 20, 30]


def test_object_store_appends_are_batched_and_complete_on_flush(gcs_root):
    metrics = f"{gcs_root}/metrics.jsonl"
    w = io.LineWriter(metrics, min_interval_s=3600)
    w.write({"step": 1})
    assert io.read_lines(metrics) == []  # not uploaded yet: one upload per interval
    w.flush()
    assert io.read_lines(metrics) == ['{"step": 1}']
    w.write({"step": 2})
    w.close()
    assert io.read_lines(metrics) == ['{"step": 1}', '{"step": 2}']
    fast = io.LineWriter(metrics, min_interval_s=0)
    fast.write({"step": 3})  # the interval has passed: uploaded at once
    assert io.read_lines(metrics)[-1] == '{"step": 3}'
    fast.close()


def test_half_line_from_a_crash_is_ignored_and_cut_before_appending(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 0}\n{"step": 5, "train_lo')  # killed mid-write
    assert io.read_lines(metrics) == ['{"step": 0}']
    io.append_lines(metrics, ['{"step": 5}'])
    assert metrics.read_text() == '{"step": 0}\n{"step": 5}\n'
    metrics.write_text('{"step": 0, "no newline at all')
    io.append_lines(metrics, ['{"step": 1}'])
    assert metrics.read_text() == '{"step": 1}\n'


def test_non_writer_processes_write_nothing(workroot, monkeypatch):
    monkeypatch.setattr(io.files, "is_writer", lambda: False)  # as on process 1
    io.write_json_atomic(f"{workroot}/r.json", {})
    io.write_text_atomic(f"{workroot}/t.txt", "x")
    io.append_lines(f"{workroot}/m.jsonl", ["{}"])
    with io.LineWriter(f"{workroot}/m.jsonl") as w:
        w.write({"step": 1})
    assert io.listdir(workroot) == []
    io.write_json_atomic(f"{workroot}/r.json", {}, any_process=True)  # e.g. a sweep driver
    assert io.listdir(workroot) == ["r.json"]


# ------------------------------------------------------------------- OS failures


def test_workdir_below_a_file(workroot):
    blocker = f"{workroot}/runs"
    io.write_text_atomic(blocker, "not a directory")
    for target in (f"{blocker}/run", f"{blocker}/run/deeper"):
        with pytest.raises(UserError) as e:
            io.makedirs(target)
        assert f"{blocker} is a file, not a directory" in str(e.value)
        assert "--workdir" in str(e.value)
    if not io.is_remote(workroot):  # object stores would store it; makedirs is the check
        with pytest.raises(UserError, match=f"{blocker} is a file"):
            io.write_json_atomic(f"{blocker}/run/results.json", {})


def test_missing_bucket(gcs_emulator):
    with pytest.raises(UserError, match="bucket gs://no-such-bucket-lmc does not exist"):
        io.makedirs("gs://no-such-bucket-lmc/run")


def _fail_with(monkeypatch, name: str, code: int, after_bytes: int | None = None):
    """Make os.<name> fail with `code` (for write: after writing `after_bytes`)."""
    real = getattr(os, name)

    def failing(*args, **kwargs):
        if name == "write" and after_bytes is not None:
            fd, data = args
            real(fd, data[:after_bytes])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, name, failing)


def test_no_space_while_replacing_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    io.write_json_atomic(target, {"complete": True, "old": 1})
    _fail_with(monkeypatch, "fsync", errno.ENOSPC)
    with pytest.raises(UserError) as e:
        io.write_json_atomic(target, {"complete": True, "new": 2})
    message = str(e.value)
    assert str(target) in message and "No space left" in message and "intact" in message
    monkeypatch.undo()
    assert io.read_json(target) == {"complete": True, "old": 1}
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # no temp file left


def test_no_space_while_appending_leaves_no_half_line(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.jsonl"
    with io.LineWriter(metrics) as w:
        w.write({"step": 0})
        _fail_with(monkeypatch, "fsync", errno.ENOSPC)
        with pytest.raises(UserError, match="No space left on the device holding"):
            w.write({"step": 1, "train_loss": 0.5})
        monkeypatch.undo()
    assert metrics.read_text() == '{"step": 0}\n'


def test_no_space_on_a_real_full_filesystem(tmp_path):
    """A 64 KiB tmpfs, filled up for real (needs root and mount; else skipped)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root; the monkeypatched tests cover ENOSPC")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        target = mnt / "results.json"
        io.write_json_atomic(target, {"old": True})
        with pytest.raises(UserError, match=f"No space left on the device holding {target}"):
            io.write_bytes_atomic(target, b"x" * 200_000)
        assert io.read_json(target) == {"old": True}
        assert os.listdir(mnt) == ["results.json"]
        with io.LineWriter(mnt / "metrics.jsonl") as w:
            w.write({"step": 0})
            with pytest.raises(UserError, match="No space left"):
                w.write({"pad": "y" * 100_000})
        assert io.read_lines(mnt / "metrics.jsonl") == ['{"step": 0}']
    finally:
        subprocess.run(["umount", mnt], check=False)


def test_unwritable_directory(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: fake what a user would get
        _fail_with(monkeypatch, "makedirs", errno.EACCES)
    else:
        ro.chmod(0o500)
    with pytest.raises(UserError) as e:
        io.write_json_atomic(ro / "run" / "results.json", {})
    assert f"Cannot write {ro}/run/results.json" in str(e.value)
    assert "Permission denied" in str(e.value) and "--workdir" in str(e.value)


def test_other_os_errors_keep_their_traceback(tmp_path, monkeypatch):
    _fail_with(monkeypatch, "fsync", errno.EIO)
    with pytest.raises(OSError) as e:
        io.write_bytes_atomic(tmp_path / "x", b"1")
    assert not isinstance(e.value, UserError) and e.value.errno == errno.EIO


def test_gcs_listing_sees_writes_from_another_client(gcs_root):
    """Two hosts share a bucket: what one writes, the other's listing must show (gcsfs
    caches listings; lmc.runtime.io drops that cache for the path it lists)."""
    io.write_text_atomic(f"{gcs_root}/a.txt", "1")
    assert io.listdir(gcs_root) == ["a.txt"]
    import gcsfs.core

    other = gcsfs.core.GCSFileSystem(skip_instance_cache=True)
    other.pipe_file(f"{gcs_root}/b.txt", b"2")
    assert io.listdir(gcs_root) == ["a.txt", "b.txt"]
    assert io.exists(f"{gcs_root}/b.txt")
