import json
import re
import subprocess
import sys

import pytest
from helpers import ROOT, subprocess_env, tiny_flags

from lmc.cli import main

TINY = tiny_flags(**{"num_steps": 30})


def run_cli(*args, cwd=ROOT):
    env = subprocess_env()
    return subprocess.run(
        [sys.executable, "-m", "lmc.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["run", "--config.model.name=transformer9"], "valid models: cnn, mlp"),
        (["run", "--config.optimizer.name=lion"], "valid optimizers: adam, adamw, sgd"),
        (["run", "--config.data.name=imagenet"], "valid datasets: digits"),
        (["run", "--config.nonexistent_key=3"], "nonexistent_key"),
        (["run", "--config.eval.methods=('naive','magic')"], "unknown method 'magic'"),
        (["run", "--config.eval.num_alphas=2"], "at least 3"),
        (["run", "--config.spawn.mode=spawn", "--config.spawn.step=100000"], "spawn step 100000"),
        (["run", "--config=configs/does_not_exist.py"], "does_not_exist"),
        (["run", "--config.batch_size=0"], "batch_size"),
        (["run", "--config.eval.methods=('naive+reset',)"], "+reset"),
        (["report"], "at least one workdir"),
        (["report", "/nonexistent/dir"], "is not a directory"),
        (
            ["run", "--config.data.name=fashion_mnist", "--config.data.dir=/nonexistent"],
            "does not exist",
        ),
        (["run", "--config.data.name=cifar10"], "needs config.data.dir"),
        (["run", "--config.model.width=-5"], "width must be positive"),
        (["run", "--config.optimizer.schedule=exp"], "valid schedules"),
        (["run", "--config.optimizer.learning_rate=-1.0"], "learning_rate must be positive"),
        (["run", "--config.experiment=bogus"], "valid experiments"),
        (["run", "--config.num_steps=-3"], "training length must be positive"),
        (["run", "--config.spawn.mode=weird"], "valid spawn modes"),
        (
            ["run", "--config.spawn.child_seeds=(1,)"],
            "config.spawn.child_seeds has 1; give at least 2",
        ),
        (["run", "--config.mesh.data=3"], "mesh"),
        (["run", "--config.model.width=abc"], "invalid literal for int"),
        (["run", "stray_argument"], "unexpected arguments"),
        (["run", "--no_such_flag=1"], "no_such_flag"),
        # A typo names the flag and the suggestion in one sentence, not a raw repr.
        (
            ["run", "--config.num_epoch=3"],
            "--config.num_epoch: the config has no key 'num_epoch'. Did you mean \"num_epochs\"",
        ),
        # Several methods are a tuple; the message shows the syntax.
        (
            ["run", "--config.eval.methods=naive,weight_matching"],
            "--config.eval.methods=\"('naive','weight_matching')\"",
        ),
        # The key the user must change, not another one.
        (
            [
                "run",
                "--config=configs/instability_mlp_fashion_mnist.py",
                "--config.num_epochs=0.01",
                "--config.data.name=digits",
            ],
            "lower config.instability.spawn_steps",
        ),
        (["run", "--config.model.width=0"], "width must be positive, got 0"),
        (
            [
                "run",
                "--config.eval.methods=('naive','learned_matching')",
                "--config.align.learned_steps=0",
            ],
            "config.align.learned_steps must be a positive integer, got 0",
        ),
    ],
)
def test_user_errors_exit_2_with_message(tmp_path, capsys, args, message):
    code = main(
        ["lmc", *args, f"--workdir={tmp_path / 'w'}"] if args[0] == "run" else ["lmc", *args]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    # Nothing half-written: a rejected config leaves no workdir behind.
    assert not (tmp_path / "w" / "results.json").exists()


def test_subprocess_user_error_has_no_traceback(tmp_path):
    proc = run_cli("run", "--config.model.name=nope", f"--workdir={tmp_path}")
    assert proc.returncode == 2
    assert "valid models" in proc.stderr and "Traceback" not in proc.stderr


def test_run_end_to_end_then_reuse_then_refuse_other_config(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["lmc", "run", f"--workdir={workdir}", *TINY]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert results["complete"] is True and results["schema_version"] == 1
    assert set(results["methods"]) == {"naive", "weight_matching"}
    naive = results["methods"]["naive"]
    assert len(naive["alphas"]) == 5 and set(naive["barrier"]) == {
        "train_loss",
        "train_error",
        "test_loss",
        "test_error",
    }
    assert results["provenance"]["config_hash"]
    assert (workdir / "curves.png").stat().st_size > 10_000
    metrics_before = (workdir / "child_0" / "metrics.jsonl").read_text()

    # Rerun: checkpoints are reused, nothing is retrained.
    assert main(["lmc", "run", f"--workdir={workdir}", *TINY]) == 0
    assert (workdir / "child_0" / "metrics.jsonl").read_text() == metrics_before
    again = json.loads((workdir / "results.json").read_text())
    assert again["methods"]["naive"]["barrier"] == naive["barrier"]

    # A different config is refused, and nothing is touched.
    capsys.readouterr()
    assert main(["lmc", "run", f"--workdir={workdir}", *TINY, "--config.num_steps=31"]) == 2
    assert "different config" in capsys.readouterr().err
    assert json.loads((workdir / "results.json").read_text()) == again

    # `lmc report` prints the table.
    assert main(["lmc", "report", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "weight_matching" in out and "barrier test_loss" in out

    # Another method list only re-evaluates: nothing retrained, old results kept.
    capsys.readouterr()
    assert main(["lmc", "run", f"--workdir={workdir}", *TINY,
                 "--config.eval.methods=('naive',)"]) == 0  # fmt: skip
    assert "only evaluation keys changed" in capsys.readouterr().err
    assert (workdir / "child_0" / "metrics.jsonl").read_text() == metrics_before
    assert set(json.loads((workdir / "results.json").read_text())["methods"]) == {"naive"}
    (kept,) = workdir.glob("results.*.json")
    assert json.loads(kept.read_text()) == again
    assert json.loads((workdir / "config.json").read_text())["eval"]["methods"] == ["naive"]


def test_overwrite_replaces_a_workdir_made_by_another_config(tmp_path):
    workdir = tmp_path / "run"
    assert (
        main(["lmc", "run", f"--workdir={workdir}", *TINY, "--config.eval.methods=('naive',)"]) == 0
    )
    assert (
        main(
            [
                "lmc",
                "run",
                f"--workdir={workdir}",
                *TINY,
                "--config.num_steps=20",
                "--config.eval.methods=('naive',)",
                "--overwrite",
            ]
        )
        == 0
    )
    config = json.loads((workdir / "config.json").read_text())
    assert config["num_steps"] == 20


@pytest.mark.parametrize("command", ["run", "sweep", "report"])
def test_every_command_has_help(capsys, command):
    assert main(["lmc", command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"lmc {command}")
    if command != "report":
        assert "--workdir" in out and "--config.KEY=VALUE" in out
    assert main(["lmc", "--help"]) == 0
    assert "lmc COMMAND --help" in capsys.readouterr().out


def test_show_lists_every_key_with_value_and_comment(tmp_path, capsys):
    assert main(["lmc", "run", "--config=configs/lm_rebasin.py", "--show",
                 f"--workdir={tmp_path / 'w'}", "--config.model.width=64"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    # Values are aligned after the longest key, so match any run of spaces.
    assert re.search(r"^model\.width += 64\b", out, re.M)  # the override is applied
    assert re.search(r"^data\.name += 'text:code'", out, re.M)  # the config file's value
    assert "# fraction of files held out" in out  # lmc.config_base's comment
    assert "eval.methods" in out and "spawn.child_seeds" in out
    assert not (tmp_path / "w").exists()  # --show runs nothing


def test_ctrl_c_checkpoints_exits_130_and_the_rerun_resumes(tmp_path):
    import signal
    import time

    workdir = tmp_path / "run"
    args = [sys.executable, "-m", "lmc.cli", "run", f"--workdir={workdir}", *TINY,
            "--config.num_steps=600", "--config.log_every_steps=10",
            "--config.eval.methods=('naive',)"]  # fmt: skip
    env = subprocess_env()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "child_0" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 2
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    rc, err = proc.wait(120), proc.stderr.read()
    assert rc == 130, err
    assert "interrupted (Ctrl-C) at step" in err and "Rerun the same command" in err
    assert "Traceback" not in err
    rerun = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "child_0: resuming from step" in rerun.stderr and "of 600" in rerun.stderr
