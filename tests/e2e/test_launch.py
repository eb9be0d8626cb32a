"""Launchers: exact commands of --dry-run, argument errors, shellcheck-clean."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT

LAUNCH = ROOT / "launch"
SCRIPTS = ("local_multihost.sh", "tpu_pod.sh", "slurm.sbatch")
SWEEP_CONFIG = """
from lmc.config_base import base_config


def get_config(arg=None):
    return base_config()


def sweep():
    for k in (0, 100):
        for seed in (1, 2):
            yield {"spawn.step": k, "seed": seed}
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(script, *args, env=None):
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        if var not in (env or {}):
            full_env.pop(var, None)
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    out = subprocess.run(
        ["shellcheck", "--shell=bash", str(LAUNCH / script)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout


def test_local_multihost_dry_run_prints_one_command_per_process():
    out = _run("local_multihost.sh", "--dry-run", "--port=4321", "--devices_per_process=2",
               "3", "lmc", "run", "--workdir=runs/a b")  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [shlex.split(line) for line in lines] == [
        ["env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=2",
         "lmc", "run", "--workdir=runs/a b", "--coordinator=127.0.0.1:4321",
         "--num_processes=3", f"--process_id={i}"]
        for i in range(3)
    ]  # fmt: skip


@pytest.mark.parametrize("args", [["0", "lmc"], ["two", "lmc"], ["2"], ["--bogus", "2", "lmc"]])
def test_local_multihost_bad_arguments_exit_2(args):
    out = _run("local_multihost.sh", "--dry-run", *args)
    assert out.returncode == 2 and out.stderr


def test_local_multihost_stops_the_others_when_one_fails():
    out = _run("local_multihost.sh", "2", "bash", "-c",
               'if [ "$2" = --process_id=1 ]; then exit 7; fi; sleep 60')  # fmt: skip
    assert out.returncode == 7  # without waiting the minute out


def test_tpu_pod_dry_run_copies_installs_and_runs_on_all_workers():
    out = _run("tpu_pod.sh", "--dry-run", "--tpu=my-v4-32", "--zone=us-central2-b",
               "--project=proj", "--", "lmc", "run", "--config=configs/default.py",
               "--workdir=/mnt/shared/run 1")  # fmt: skip
    assert out.returncode == 0, out.stderr
    cmds = [shlex.split(line) for line in out.stdout.splitlines()]
    assert [c[0] for c in cmds] == ["tar", "gcloud", "gcloud", "gcloud", "gcloud"]
    where = ["--zone=us-central2-b", "--worker=all", "--project=proj"]
    assert cmds[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/lmc-my-v4-32.tar.gz",
                       "my-v4-32:/tmp/lmc.tar.gz", *where]  # fmt: skip
    for c in cmds[2:]:
        assert c[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32"]
        assert c[6:9] == where and c[9].startswith("--command=")
    assert "pip install -q -e '.[tpu]'" in cmds[3][9]
    remote = cmds[4][9][len("--command=") :]
    assert remote.startswith("cd ~/lmc && LMC_DISTRIBUTED=1 LMC_PROCESS_ID=$(curl ")
    assert "agent-worker-number)" in remote
    # The user's command reaches the workers' shell with its quoting intact.
    assert shlex.split(remote.split("agent-worker-number) ", 1)[1]) == [
        "lmc", "run", "--config=configs/default.py", "--workdir=/mnt/shared/run 1"]  # fmt: skip


def test_tpu_pod_skips_copy_and_install_on_request_and_needs_tpu_and_zone():
    out = _run("tpu_pod.sh", "--dry-run", "--tpu=t", "--zone=z", "--no-copy", "--no-install",
               "--", "lmc", "run")  # fmt: skip
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1
    assert _run("tpu_pod.sh", "--dry-run", "--tpu=t", "--", "lmc").returncode == 2
    assert _run("tpu_pod.sh", "--dry-run", "--tpu=t", "--zone=z").returncode == 2


def test_slurm_sweep_dry_run_submits_an_array_with_one_task_per_point(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(SWEEP_CONFIG)
    lmc = f"{sys.executable} -m lmc.cli"
    args = ["--dry-run", "sweep", f"--config={cfg}", f"--workdir={tmp_path / 'w'}",
            "--config.num_steps=200"]  # fmt: skip
    out = _run("slurm.sbatch", *args, env={"LMC": lmc, "LMC_SBATCH_ARGS": "--gpus=1 --time=1:00:00",
                                           "LMC_ARRAY_LIMIT": "2"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert shlex.split(lines[0]) == [
        "sbatch", "--gpus=1", "--time=1:00:00", "--array=0-3%2", str(LAUNCH / "slurm.sbatch"),
        "sweep", f"--config={cfg}", f"--workdir={tmp_path / 'w'}", "--config.num_steps=200"]  # fmt: skip
    assert len(lines) == 5 and lines[3].startswith("# array task 2: srun --kill-on-bad-exit=1 ")
    # Inside array task 2: point 2 (spawn.step=100, seed=1) under srun.
    out = _run("slurm.sbatch", *args, env={"LMC": lmc, "SLURM_JOB_ID": "7",
                                           "SLURM_ARRAY_TASK_ID": "2"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    point = tmp_path / "w" / "step=100,seed=1"
    assert shlex.split(out.stdout) == [
        "srun", "--kill-on-bad-exit=1", *shlex.split(lmc), "run", f"--config={cfg}",
        f"--workdir={point}", "--config.num_steps=200", "--config.spawn.step=100",
        "--config.seed=1"]  # fmt: skip
    assert lines[3] == f"# array task 2: {out.stdout.strip()}"
    out = _run("slurm.sbatch", *args, env={"LMC": lmc, "SLURM_JOB_ID": "7",
                                           "SLURM_ARRAY_TASK_ID": "4"})  # fmt: skip
    assert out.returncode == 2 and "no point 4" in out.stderr


def test_slurm_run_dry_run_submits_itself_then_sruns_every_task():
    args = ["--dry-run", "run", "--config=configs/default.py", "--workdir=runs/big"]
    out = _run("slurm.sbatch", *args, env={"LMC_SBATCH_ARGS": "--nodes=2 --ntasks-per-node=4"})
    assert out.returncode == 0, out.stderr
    assert shlex.split(out.stdout) == [
        "sbatch", "--nodes=2", "--ntasks-per-node=4", str(LAUNCH / "slurm.sbatch"), "run",
        "--config=configs/default.py", "--workdir=runs/big"]  # fmt: skip
    out = _run("slurm.sbatch", *args, env={"SLURM_JOB_ID": "7"})
    assert shlex.split(out.stdout) == [
        "srun", "--kill-on-bad-exit=1", "lmc", "run", "--config=configs/default.py",
        "--workdir=runs/big"]  # fmt: skip
    assert _run("slurm.sbatch", "--dry-run", "train").returncode == 2


def test_slurm_sweep_with_a_shared_parent_submits_it_first_and_the_points_after(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(SWEEP_CONFIG.replace("return base_config()", "c = base_config()\n"
                                        "    c.spawn.mode = 'spawn'\n    return c")
                   .replace('yield {"spawn.step": k, "seed": seed}',
                            'yield {"spawn.step": k, "spawn.child_seeds": (seed, seed + 2)}'))  # fmt: skip
    lmc = f"{sys.executable} -m lmc.cli"
    args = ["--dry-run", "sweep", f"--config={cfg}", f"--workdir={tmp_path / 'w'}",
            "--config.num_steps=200"]  # fmt: skip
    out = _run("slurm.sbatch", *args, env={"LMC": lmc})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # The stage (line 0: the shared parent) as a one-task array, then points 1..4 after it.
    assert shlex.split(lines[0])[:3] == ["sbatch", "--parsable", "--array=0-0"]
    assert shlex.split(lines[1])[:3] == [
        "sbatch", "--dependency=afterok:<shared-parent-job-id>", "--array=1-4"]  # fmt: skip
    assert "--config.experiment=parent" in lines[2] and lines[2].startswith("# array task 0: ")
    assert all("--parent=" in line for line in lines[3:7])
