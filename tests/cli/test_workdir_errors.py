"""`lmc run` on a workdir: one run per workdir (the lock), and OS and parse failures as
user errors (exit 2, one paragraph, no traceback, nothing half-written)."""

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, subprocess_env, tiny_flags

from lmc.cli import main
from lmc.errors import EXIT_USER_ERROR
from lmc.runtime import io

TINY = tiny_flags(**{"eval.num_alphas": 3, "eval.batch_size": 256})


def _user_error(capsys, *args) -> str:
    """Run `lmc ARGS` in-process; it must exit 2 with one message and no traceback."""
    assert main(["lmc", *args]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "lmc: error:" in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ one run per workdir


def test_second_run_on_a_workdir_in_use_is_refused_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    # A long run (many steps), killed once the second one has been refused.
    first = subprocess.Popen(
        [sys.executable, "-m", "lmc.cli", "run", f"--workdir={workdir}", *TINY,
         "--config.num_steps=100000"],
        env=subprocess_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        lock = workdir / ".lmc.lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().endswith("\n")):
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = subprocess.run(
            [sys.executable, "-m", "lmc.cli", "run", f"--workdir={workdir}", *TINY,
             "--config.num_steps=100000"],
            env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert second.returncode == EXIT_USER_ERROR, second.stderr
        assert "Traceback" not in second.stderr
        message = second.stderr
        assert f"another `lmc run` is running on {workdir}" in message
        assert f"host {socket.gethostname()}, pid {first.pid}" in message
        assert f"started {holder['started']}" in message
        assert first.poll() is None  # the first run is untouched
    finally:
        first.kill()
        first.wait()


def test_stale_lock_of_a_dead_run_is_taken_over(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    record = {"host": socket.gethostname(), "pid": dead.pid, "started": "2020-01-01T00:00:00",
              "command": "lmc run", "token": "x", "lease_s": 120.0, "heartbeat": time.time()}  # fmt: skip
    (workdir / ".lmc.lock").write_text(json.dumps(record) + "\n")
    assert main(["lmc", "run", f"--workdir={workdir}", *TINY]) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock {workdir}/.lmc.lock (host {socket.gethostname()}, " in err
    assert f"pid {dead.pid}, started 2020-01-01T00:00:00 (lmc run)): its process" in err
    assert io.read_json(workdir / "results.json")["complete"] is True
    assert not (workdir / ".lmc.lock").exists()  # released at the end


# ------------------------------------------------------------------ parse failures


@pytest.mark.parametrize(
    "config_text, arg, expected",
    [
        ("import no_such_module_lmc\n", "", r"bad\.py:1 \(in <module>\) raised ModuleNotFound"),
        ("def get_config(arg=None):\n    return int(arg)\n", ":abc",
         r"bad\.py:2 \(in get_config\) raised ValueError: invalid literal .*'abc'.* "
         r"get_config received the argument 'abc'"),
        ("def get_config(arg=None):\n    raise RuntimeError('no such preset ' + arg)\n", ":x",
         r"bad\.py:2 \(in get_config\) raised RuntimeError: no such preset x"),
        ("def get_config():\n    return None\n", ":3",
         r"raised TypeError: get_config\(\) takes 0 positional arguments"),
    ],
)  # fmt: skip
def test_config_file_that_raises_is_a_user_error(tmp_path, capsys, config_text, arg, expected):
    import re

    config = tmp_path / "bad.py"
    config.write_text(config_text)
    err = _user_error(capsys, "run", f"--config={config}{arg}", f"--workdir={tmp_path / 'w'}")
    assert re.search(expected, err), err
    assert f"cannot load --config={config}{arg}" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_bad_argument_to_a_shipped_config(capsys, tmp_path):
    err = _user_error(capsys, "run", "--config=configs/resnet20_cifar10.py:abc", "--show")
    assert "configs/resnet20_cifar10.py:22 (in get_config) raised ValueError" in err


@pytest.mark.parametrize(
    "content, why",
    [(b"{\"model\": ", "is not valid JSON"), (b"\xff\xfe", "is not valid JSON"),
     (b"[1, 2]", "holds a list, not a JSON object"), (None, "is a directory")],
)  # fmt: skip
def test_corrupt_config_json_names_the_file(tmp_path, capsys, content, why):
    workdir = tmp_path / "run"
    workdir.mkdir()
    saved = workdir / "config.json"
    if content is None:
        saved.mkdir()
    else:
        saved.write_bytes(content)
    err = _user_error(capsys, "run", f"--workdir={workdir}", *TINY)
    assert f"{saved} is corrupt: it {why}" in err and "--overwrite" in err
    assert sorted(os.listdir(workdir)) == ["config.json"]  # nothing else written


def test_unreadable_config_json(tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")
    real = io.files.read_bytes

    def denied(p):
        if os.fspath(p).endswith("config.json"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(p))
        return real(p)

    monkeypatch.setattr(io.files, "read_bytes", denied)
    err = _user_error(capsys, "run", f"--workdir={workdir}", *TINY)
    assert f"Cannot read {workdir}/config.json while reading it: Permission denied" in err


# ------------------------------------------------------------------ OS failures


def test_workdir_below_a_file(tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("a file")
    for workdir in (blocker, blocker / "run"):
        err = _user_error(capsys, "run", f"--workdir={workdir}", *TINY)
        assert f"{blocker} is a file, not a directory" in err
    assert blocker.read_text() == "a file"


def test_unwritable_directory(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: fake what a user would get
        real = os.makedirs

        def denied(name, *args, **kwargs):
            if os.fspath(name).startswith(str(ro)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
            return real(name, *args, **kwargs)

        monkeypatch.setattr(os, "makedirs", denied)
    else:
        ro.chmod(0o500)
    err = _user_error(capsys, "run", f"--workdir={ro / 'run'}", *TINY)
    assert f"Cannot write {ro / 'run'}" in err and "Permission denied" in err
    assert "--workdir" in err and os.listdir(ro) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount; skipped elsewhere: tests/runtime/test_io.py covers
    ENOSPC by monkeypatching)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", mnt], check=False)


def _fill(disk: Path) -> None:
    try:
        with open(disk / "filler", "ab", buffering=0) as f:
            while True:
                f.write(b"\0" * 65536)
    except OSError as e:
        assert e.errno == errno.ENOSPC


def test_no_space_while_saving_checkpoint_metrics_or_results(small_disk, capsys, monkeypatch):
    """The disk fills up at a checkpoint save, then at a metrics line, then while writing
    results.json: each time exit 2 naming the file, earlier state intact, no temp files;
    after freeing space the same command finishes."""
    from lmc.runtime.checkpoint import Checkpointer
    from lmc.training.metrics_log import MetricsWriter

    workdir = small_disk / "run"
    args = ["run", f"--workdir={workdir}", *TINY, "--config.checkpoint.every_steps=10",
            "--config.spawn.mode=spawn", "--config.spawn.step=10", "--config.log_every_steps=5"]  # fmt: skip

    def fill_when(cls, name, condition):
        real = getattr(cls, name)

        def wrapper(self, *a, **kw):
            if condition(self, *a):
                _fill(small_disk)
            return real(self, *a, **kw)

        monkeypatch.setattr(cls, name, wrapper)

    # 1. A checkpoint of child_0 at step 30.
    fill_when(Checkpointer, "save", lambda self, step, *_: "child_0" in str(self.directory)
              and step == 30)  # fmt: skip
    err = _user_error(capsys, *args)
    ckpts = workdir / "child_0" / "checkpoints"
    assert f"No space left on the device holding {ckpts} while saving checkpoint step 30" in err
    assert "the unfinished step was removed and the earlier step 20 is intact" in err
    assert os.listdir(ckpts) == ["20"]  # children start at the spawn step 10
    lines = (workdir / "child_0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines][-1] == 30  # flushed before the save
    monkeypatch.undo()
    os.unlink(small_disk / "filler")

    # 2. A metrics line of child_1 at step 25. tmpfs allocates whole pages, so a short
    # line still fits on a full disk: the device reports ENOSPC at the fsync instead.
    real_write = MetricsWriter.write

    def write(self, record):
        if "child_1" in str(self.path) and record["step"] == 25:
            real_fsync = os.fsync

            def no_space(fd):
                monkeypatch.setattr(os, "fsync", real_fsync)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(os, "fsync", no_space)
        return real_write(self, record)

    monkeypatch.setattr(MetricsWriter, "write", write)
    err = _user_error(capsys, *args)
    metrics = workdir / "child_1" / "metrics.jsonl"
    assert f"No space left on the device holding {metrics} while appending to it" in err
    assert metrics.read_bytes().endswith(b"\n")
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()][-1] == 20
    monkeypatch.undo()

    # 3. results.json.
    real_write = io.write_json_atomic

    def fill_then_write(p, obj, **kw):
        if os.fspath(p).endswith("results.json"):
            _fill(small_disk)
        return real_write(p, obj, **kw)

    monkeypatch.setattr(io, "write_json_atomic", fill_then_write)
    err = _user_error(capsys, *args)
    assert f"No space left on the device holding {workdir}/results.json" in err
    assert not any(
        n.startswith(".results.json") or n == "results.json" for n in os.listdir(workdir)
    )
    monkeypatch.undo()
    os.unlink(small_disk / "filler")

    # 4. Space again: the same command finishes from where it stopped.
    assert main(["lmc", *args]) == 0
    assert io.read_json(workdir / "results.json")["complete"] is True
    for child in ("child_0", "child_1"):
        steps = [
            json.loads(x)["step"]
            for x in (workdir / child / "metrics.jsonl").read_text().splitlines()
        ]
        assert steps == sorted(set(steps)) and steps[-1] == 40
