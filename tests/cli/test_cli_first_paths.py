"""The first paths a new user takes through the CLI: --show's comments, configs from
outside the repository, an unusable workdir, `lmc report | head`, an LM's report."""

import json
import math
import os
import subprocess
import sys

import pytest
from helpers import ROOT

from lmc.cli import main
from lmc.errors import EXIT_USER_ERROR


def show(capsys, *args) -> dict[str, str]:
    """--show's listing: key -> the line's comment ("" if none)."""
    capsys.readouterr()
    assert main(["lmc", "run", "--show", *args]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines()[1:]:
        key = line.split("=", 1)[0].strip()
        rows[key] = line.split("   # ", 1)[1] if "   # " in line else ""
    return rows


def test_show_comments_belong_to_the_assignment_that_set_the_value(capsys):
    image = show(capsys, "--config.optimizer.momentum=0.5")
    # lm_config()'s line `learning_rate = 4e-3  # best of ...` never ran for this config.
    assert "best of" not in image["optimizer.learning_rate"]
    assert "SGD" in image["optimizer.name"]
    assert image["optimizer.momentum"] == "set on the command line"
    lm = show(capsys, f"--config={ROOT / 'configs' / 'lm_rebasin.py'}")
    assert "best of" in lm["optimizer.learning_rate"]
    assert "SGD" not in lm["optimizer.name"]  # lm_config() set 'adam' after base's 'sgd'
    assert lm["num_steps"] == ""  # lm_rebasin.py's own value, uncommented: no stale comment


@pytest.mark.parametrize("factory", ["base_config", "lm_config"])
def test_every_key_of_the_base_configs_is_documented(tmp_path, capsys, factory):
    config = tmp_path / "c.py"
    config.write_text(f"from lmc.config_base import {factory}\n\n\n"
                      f"def get_config():\n    return {factory}()\n")  # fmt: skip
    rows = show(capsys, f"--config={config}")
    assert len(rows) > 40
    assert [k for k, note in rows.items() if not note] == []


def test_a_config_path_of_the_repository_works_from_any_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = show(capsys, "--config=configs/lm_rebasin.py")
    assert rows["data.name"] == ""  # loaded: lm_rebasin.py sets it
    assert main(["lmc", "run", "--config=configs/nope.py", "--show"]) == EXIT_USER_ERROR
    assert "configs/nope.py: no such file" in capsys.readouterr().err


def test_a_workdir_on_a_kernel_file_system_is_a_user_error(capsys):
    assert main(["lmc", "run", "--workdir=/proc/lmc_cannot_be_here",
                 "--config.data.name=synthetic"]) == EXIT_USER_ERROR  # fmt: skip
    err = capsys.readouterr().err
    assert "/proc/lmc_cannot_be_here" in err and "ordinary disk" in err


def test_output_into_a_closed_pipe_ends_quietly():
    read, write = os.pipe()
    os.close(read)  # `lmc report --help | head` after head has exited
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "lmc.cli", "report", "--help"], stdout=write,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, timeout=120)  # fmt: skip
    os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141  # 128 + SIGPIPE, as a shell reports it


def test_report_of_a_language_model_run_shows_perplexity_and_bits_per_byte(tmp_path, capsys):
    loss = 1.5
    metrics = {"test_loss": loss, "test_perplexity": math.exp(loss),
               "test_bits_per_byte": loss / math.log(2), "test_error": 0.25}  # fmt: skip
    barrier = {k: 0.1 for k in ("train_loss", "train_error", "test_loss", "test_error")}
    results = {"schema_version": 1, "complete": True, "experiment": "pair",
               "endpoints": {"a": metrics, "b": metrics},
               "methods": {"naive": {"alphas": [0, 1], "barrier": barrier}}}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["lmc", "report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test perplexity" in out and "4.4817" in out and "2.1640" in out and "25.00%" in out
