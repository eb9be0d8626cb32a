"""`lmc sweep`: points from a config's sweep(), validation, lock, kill and resume."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, subprocess_env

from lmc import cli
from lmc.cli import sweep
from lmc.errors import EXIT_USER_ERROR

CONFIG = """
from lmc.config_base import base_config


def get_config(arg=None):
    c = base_config()
    c.data.name = "synthetic"
    c.model.width, c.model.depth = 32, 2
    c.batch_size = 32
    c.num_steps = 20
    c.progress = False
    c.spawn.mode = "spawn"
    c.eval.methods = ("naive",)
    c.eval.num_alphas = 3
    c.eval.train_subset = 256
    c.eval.batch_size = 128
    return c


def sweep():
    for k in (0, 10):
        for seed in (0, 1):
            yield {POINT}
"""


def _config_file(tmp_path, point='{"spawn.step": k, "seed": seed}', body=CONFIG) -> str:
    path = tmp_path / "sweep_cfg.py"
    path.write_text(body.replace("{POINT}", point))
    return str(path)


def _main(*args) -> int:
    return cli.main(["lmc", "sweep", *args])


def test_print_gives_one_lmc_run_per_point_with_forwarded_overrides(tmp_path, capsys):
    cfg = _config_file(tmp_path)
    rc = _main(f"--config={cfg}", f"--workdir={tmp_path / 'w'}", "--print",
               "--config.align.seed=3", "--config.num_steps", "7")  # fmt: skip
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    argv = shlex.split(lines[2])
    assert argv[:3] == ["lmc", "run", f"--config={cfg}"]
    assert argv[3] == f"--workdir={tmp_path / 'w' / 'step=10,seed=0'}"
    # Base overrides first, the point's last.
    assert argv[4:] == ["--config.align.seed=3", "--config.num_steps=7", "--config.spawn.step=10",
                        "--config.seed=0"]  # fmt: skip
    assert not (tmp_path / "w").exists()  # --print runs nothing


GRID_CONFIG = """
from lmc.config_base import base_config


def get_config(arg=None):
    c = base_config()
    c.experiment, c.spawn.mode = "instability", "spawn"
    c.instability.spawn_steps = (0, 10)
    return c


def sweep({PARAM}):
    for k in {STEPS}.instability.spawn_steps:
        yield {"instability.spawn_steps": (k,)}
"""


def test_a_sweep_of_the_config_follows_command_line_overrides_of_its_grid(tmp_path, capsys):
    path = tmp_path / "grid.py"
    path.write_text(GRID_CONFIG.replace("{PARAM}", "config").replace("{STEPS}", "config"))
    assert _main(f"--config={path}", f"--workdir={tmp_path / 'w'}", "--print",
                 "--config.instability.spawn_steps=(0,10,50,150)") == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()[1:]  # line 0: the shared parent
    # One point per overridden k (then --parent); the point's own value replaces the
    # command line's.
    assert [shlex.split(line)[-2] for line in lines] == [
        f"--config.instability.spawn_steps=({k},)" for k in (0, 10, 50, 150)]  # fmt: skip
    assert all("(0, 10, 50, 150)" not in line for line in lines)


def test_a_fixed_grid_refuses_an_override_of_its_keys_saying_how_to_change_it(tmp_path, capsys):
    path = tmp_path / "grid.py"
    path.write_text(GRID_CONFIG.replace("{PARAM}", "").replace("{STEPS}", "get_config()"))
    assert _main(f"--config={path}", f"--workdir={tmp_path / 'w'}", "--print",
                 "--config.instability.spawn_steps=(0,10,50,150)") == EXIT_USER_ERROR  # fmt: skip
    err = capsys.readouterr().err
    assert "--config.instability.spawn_steps" in err and "def sweep(config)" in err


def test_tuple_and_string_values_round_trip_through_the_command_line(tmp_path, capsys):
    cfg = _config_file(
        tmp_path,
        point='{"spawn.child_seeds": (seed, k + 5), '
        '"data.name": "synthetic", "eval.methods": ["naive"]}',
    )
    assert _main(f"--config={cfg}", f"--workdir={tmp_path / 'w'}", "--print") == 0
    lines = capsys.readouterr().out.splitlines()
    # The points differ only in children: line 0 trains their one shared parent.
    assert "--config.experiment=parent" in lines[0] and len(lines) == 5
    line = lines[2]
    assert "--config.spawn.child_seeds=(1, 5)" in shlex.split(line)
    assert f"--parent={tmp_path / 'w' / 'shared_parent'}" in shlex.split(line)
    assert "/child_seeds=1-5 " in line  # only what varies names the point


@pytest.mark.parametrize(
    "point, message",
    [
        (
            '{"spawn.stepp": k}',
            "'spawn.stepp' is not a config key .*valid there: child_seeds, mode, .*step",
        ),
        ('{"nosuch.step": k}', "'nosuch.step' is not a config key"),
        ('{"spawn": k}', "'spawn' is a config group"),
        ('{"num_steps": "many"}', "sweep point 0 .*num_steps"),
        ('{"seed": 1}', "repeats point 0"),
    ],
)
def test_bad_sweep_points_error_before_launching_anything(tmp_path, capsys, point, message):
    cfg = _config_file(tmp_path, point=point)
    workdir = tmp_path / "w"
    assert _main(f"--config={cfg}", f"--workdir={workdir}") == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "lmc: error:" in err and "Traceback" not in err
    assert re.search(message, err), err
    assert not workdir.exists()


def test_config_without_sweep_function_is_a_user_error(tmp_path, capsys):
    rc = _main("--config=configs/default.py", f"--workdir={tmp_path / 'w'}")
    assert rc == EXIT_USER_ERROR
    assert "defines no sweep()" in capsys.readouterr().err


def test_second_sweep_on_the_same_dir_is_refused(tmp_path, capsys):
    cfg = _config_file(tmp_path)
    workdir = tmp_path / "w"
    workdir.mkdir()
    with sweep._lock(workdir):  # another sweep holds DIR/.sweep.lock
        assert _main(f"--config={cfg}", f"--workdir={workdir}") == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "another `lmc sweep` is running on" in err and f"pid {os.getpid()}" in err
    assert not any(workdir.glob("step=*"))


def test_instability_config_sweep_points_are_valid(capsys):
    path = ROOT / "configs" / "instability_mlp_fashion_mnist.py"
    if not path.exists():
        pytest.skip("no instability config")
    assert _main(f"--config={path}", "--workdir=runs/x", "--print") == 0
    lines = capsys.readouterr().out.splitlines()
    # The shared parent, then every k of the single-run config x 2 pairs.
    assert len(lines) == 9 and all(line.startswith("lmc run ") for line in lines)
    assert "--config.experiment=parent" in lines[0] and "(0, 25, 100, 400)" in lines[0]


def test_point_names_and_forwarded_flags():
    assert sweep.point_name({"spawn.step": 500, "seed": 1}) == "step=500,seed=1"
    assert sweep.point_name({"spawn.step": 5, "eval.step": 1}) == "spawn.step=5,eval.step=1"
    assert sweep.point_name({"spawn.step": 5, "seed": 1}, varying={"seed"}) == "seed=1"
    assert sweep.point_name({"data.name": "tfds:mnist/x y"}) == "name=tfds-mnist-x-y"
    long = sweep.point_name({"k": "x" * 300})
    assert len(long) <= 120 and long != sweep.point_name({"k": "x" * 301})
    argv = ["lmc sweep", "--config=c.py", "--workdir=w", "--parallel=2", "--config.a=1",
            "--config.b", "2", "--overwrite", "--print", "--process_id", "1"]  # fmt: skip
    assert sweep.forwarded_args(argv) == ["--config.a=1", "--config.b=2", "--overwrite",
                                          "--process_id=1"]  # fmt: skip


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find orphans")
def test_sweep_runs_all_points_survives_a_kill_and_resumes(tmp_path, capsys):
    cfg = _config_file(tmp_path)
    workdir = tmp_path / "sweep"
    args = [f"--config={cfg}", f"--workdir={workdir}", "--parallel=2"]
    env = subprocess_env()
    first = subprocess.Popen([sys.executable, "-m", "lmc.cli", "sweep", *args], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(workdir.glob("*/results.json")):
        assert first.poll() is None, first.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no point finished in time"
        time.sleep(0.2)
    first.kill()  # SIGKILL: no chance to clean up
    first.wait()
    # The running points die with it (parent-death signal): nothing keeps writing.
    deadline = time.monotonic() + 30
    while _processes_mentioning(str(workdir)):
        assert time.monotonic() < deadline, "points outlived the killed sweep"
        time.sleep(0.2)
    killed = json.loads((workdir / "sweep.json").read_text())
    assert killed["complete"] is False

    assert _main(*args) == 0  # in-process driver; the points are subprocesses
    captured = capsys.readouterr()
    summary = json.loads((workdir / "sweep.json").read_text())
    assert summary["complete"] is True
    statuses = {p["name"]: p["status"] for p in summary["points"]}
    assert set(statuses) == {f"step={k},seed={s}" for k in (0, 10) for s in (0, 1)}
    assert "skipped" in statuses.values() and set(statuses.values()) <= {"skipped", "done"}
    for name in statuses:
        results = json.loads((workdir / name / "results.json").read_text())
        assert results["complete"] and results["config"]["spawn"]["step"] in (0, 10)
    assert captured.out.count("| naive") == 4  # the report table
    # A third run finds everything done and runs nothing.
    assert _main(*args) == 0
    assert "4 already done, 0 to run" in capsys.readouterr().err
    assert cli.main(["lmc", "report", str(workdir)]) == 0
    assert capsys.readouterr().out.count("| naive") == 4


def test_points_use_the_same_compilation_cache_settings_as_lmc_run(tmp_path, monkeypatch):
    # A point is an `lmc run`: it must see LMC_COMPILATION_CACHE (size cap, lock, =off),
    # not a JAX_COMPILATION_CACHE_DIR of the sweep's own, which lmc run would defer to.
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("LMC_COMPILATION_CACHE", "off")
    env = sweep.child_env(tmp_path)
    assert "JAX_COMPILATION_CACHE_DIR" not in env
    assert env["LMC_COMPILATION_CACHE"] == "off"


SHARED_PARENT_CONFIG = """
from lmc.config_base import base_config


def get_config(arg=None):
    c = base_config()
    c.experiment = "instability"
    c.data.name = "synthetic"
    c.model.width, c.model.depth = 32, 2
    c.batch_size = 32
    c.num_steps = 30
    c.progress = False
    c.mesh.data = 1
    c.spawn.mode = "spawn"
    c.spawn.child_seeds = (1, 2, 3, 4)
    c.instability.spawn_steps = (0, 10)
    c.instability.num_pairs = 2
    c.eval.methods = ("naive",)
    c.eval.num_alphas = 3
    c.eval.train_subset = 256
    c.eval.batch_size = 128
    return c


def sweep():
    c = get_config()
    for k in c.instability.spawn_steps:
        for pair in range(2):
            yield {"instability.spawn_steps": (k,), "instability.num_pairs": 1,
                   "spawn.child_seeds": c.spawn.child_seeds[2 * pair: 2 * pair + 2]}
"""


def test_instability_sweep_trains_one_parent_and_ends_in_the_single_run_figure(tmp_path, capsys):
    cfg = tmp_path / "instab_cfg.py"
    cfg.write_text(SHARED_PARENT_CONFIG)
    workdir = tmp_path / "sweep"
    assert _main(f"--config={cfg}", f"--workdir={workdir}", "--parallel=2") == 0
    err = capsys.readouterr().err
    assert "one shared parent" in err
    # Exactly one parent: the first stage's; the points only trained children.
    parents = sorted(p.relative_to(workdir) for p in workdir.rglob("parent") if p.is_dir())
    assert parents == [Path("shared_parent/parent")], parents
    kept = sorted(int(p.name) for p in (workdir / "shared_parent/parent/checkpoints").iterdir()
                  if p.name.isdigit())  # fmt: skip
    assert kept == [0, 10]
    names = sorted(p.name for p in workdir.iterdir() if (p / "results.json").exists())
    assert names == ["shared_parent", "spawn_steps=0,child_seeds=1-2",
                     "spawn_steps=0,child_seeds=3-4", "spawn_steps=10,child_seeds=1-2",
                     "spawn_steps=10,child_seeds=3-4"]  # fmt: skip
    # One result for the sweep: every k, 2 pairs each, and its barrier_vs_k.png ...
    pooled = json.loads((workdir / "results.json").read_text())
    assert [p["spawn_step"] for p in pooled["points"]] == [0, 10]
    assert all(p["methods"]["naive"]["num_pairs"] == 2 for p in pooled["points"])
    assert (workdir / "barrier_vs_k.png").stat().st_size > 10_000
    # ... equal to the single run of the same config (same parent, same children).
    single = tmp_path / "single"
    assert cli.main(["lmc", "run", f"--config={cfg}", f"--workdir={single}"]) == 0
    alone = json.loads((single / "results.json").read_text())
    assert pooled["points"] == alone["points"]
    # Both runs share the spawn code, so anchor one child independently: a k = 0 child
    # of a point is a plain run from the parent's init with the point's child seed.
    _assert_child_is_a_fresh_run(workdir / "spawn_steps=0,child_seeds=3-4", tmp_path / "ref")
    # The onset k* over the pooled pairs is the single run's (same points, same length).
    assert pooled["onset"] == alone["onset"] and pooled["total_steps"] == alone["total_steps"]
    # `lmc report DIR` on the sweep prints the pooled table, grouped by k.
    capsys.readouterr()
    assert cli.main(["lmc", "report", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "[spawn_step=0]" in out and "naive (2 pairs)" in out
    assert "Onset k*" in out and "naive: k* " in out


def _assert_child_is_a_fresh_run(point: Path, ref_dir: Path) -> None:
    import jax
    import ml_collections
    import numpy as np

    from lmc.experiments.common import setup
    from lmc.runtime.checkpoint import Checkpointer
    from lmc.training import Seeds, train

    c = ml_collections.ConfigDict(json.loads((point / "results.json").read_text())["config"])
    ds = setup.load_data(c)
    model = setup.load_model(c, ds)
    seed = c.spawn.child_seeds[0]  # 3: this point's first child
    ref = train(model=model, dataset=ds, config=c, run_dir=ref_dir, seeds=Seeds(c.seed, seed, seed))
    ckpt = Checkpointer(point / "k0" / "child_0" / "checkpoints", every_steps=1, read_only=True)
    try:
        _, got = ckpt.restore_latest()
    finally:
        ckpt.close()
    for x, y in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(ref["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
