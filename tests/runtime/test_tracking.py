"""Trackers (`config.log.trackers`, lmc.runtime.tracking): one tiny `lmc run` with TensorBoard and
W&B (offline), read back with TensorBoard's own event reader and W&B's `leet inspect`,
against metrics.jsonl and results.json (the source of truth); a missing package or an
unknown tracker is a UserError naming the extra or the valid names."""

import ast
import glob
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, tiny_flags

from lmc import cli
from lmc.config_base import base_config
from lmc.errors import UserError
from lmc.runtime import tracking

TINY = tiny_flags(
    **{
        "model.width": 16,
        "model.depth": 1,
        "num_steps": 20,
        "log_every_steps": 5,
        "eval_every_steps": 10,
        "eval.methods": ("naive",),
        "eval.num_alphas": 3,
        "eval.batch_size": 256,
    }
)


def _metrics(path: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def _tensorboard(run_dir: Path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    acc = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return acc


def _wandb_inspect(run_dir: str) -> str:
    """W&B's own reader of a run's .wandb log (`wandb leet inspect`): a record a line."""
    return subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", run_dir],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip


@pytest.fixture
def tracked_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = tmp_path / "run"
    argv = ["lmc", "run", f"--workdir={workdir}", *TINY,
            "--config.log.trackers=tensorboard,wandb", "--config.log.wandb_mode=offline"]  # fmt: skip
    assert cli.main(argv) == 0
    return workdir


def test_tensorboard_and_wandb_get_the_metrics_barriers_curves_and_config(tracked_run):
    workdir = tracked_run
    results = json.loads((workdir / "results.json").read_text())
    naive = results["methods"]["naive"]

    # TensorBoard: one run per network, each metrics.jsonl value at its step.
    for child in ("child_0", "child_1"):
        metrics = _metrics(workdir / child / "metrics.jsonl")
        acc = _tensorboard(workdir / "tensorboard" / child)
        for key in ("train_loss", "test_error"):
            logged = {e.step: e.value for e in acc.Scalars(key)}
            expected = {s: r[key] for s, r in metrics.items() if key in r}
            assert logged.keys() == expected.keys() and len(expected) >= 2
            for step, value in expected.items():
                assert math.isclose(logged[step], value, rel_tol=1e-6), (child, key, step)
    acc = _tensorboard(workdir / "tensorboard" / "results")
    for metric, value in naive["barrier"].items():
        assert math.isclose(acc.Scalars(f"barrier/naive/{metric}")[0].value, value, rel_tol=1e-6)
    curve = acc.Scalars("curves/naive/test_loss")
    assert [e.step for e in curve] == [round(1000 * a) for a in naive["alphas"]] == [0, 500, 1000]
    for event, value in zip(curve, naive["curves"]["test_loss"], strict=True):
        assert math.isclose(event.value, value, rel_tol=1e-6)
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode()
             for tag in acc.Tags()["tensors"]}  # fmt: skip
    assert "| naive" in texts["table/text_summary"]
    assert '"num_steps": 20' in texts["config/text_summary"]

    # W&B offline: the run directory's records, read by W&B's own reader.
    (run_dir,) = glob.glob(str(workdir / "wandb" / "offline-run-*"))
    records = [json.loads(line) for line in _wandb_inspect(run_dir).splitlines()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"]["update"])
    (start,) = [r["run"] for r in records if r["type"] == "run"]
    (exit_record,) = [r for r in records if r["type"] == "exit"]
    for child in ("child_0", "child_1"):
        metrics = _metrics(workdir / child / "metrics.jsonl")
        logged = {h[f"{child}/step"]: h for h in history if f"{child}/step" in h}
        assert logged.keys() == metrics.keys()
        for step, record in metrics.items():
            assert logged[step][f"{child}/train_loss"] == pytest.approx(record["train_loss"])
    assert start["display_name"] == "run" and exit_record["exit"].get("exit_code", 0) == 0
    assert start["config"]["update"]["model"] == results["config"]["model"]
    for metric, value in naive["barrier"].items():
        assert summary[f"barrier/naive/{metric}"] == pytest.approx(value)
    tables = {Path(p).name.split("_")[0]: json.loads(Path(p).read_text())
              for p in glob.glob(f"{run_dir}/files/media/table/*.table.json")}  # fmt: skip
    assert tables["table"]["columns"][:2] == ["run", "method"]
    assert tables["table"]["data"][0][:2] == ["run", "naive"]
    curve_rows = [r for r in tables["curves"]["data"] if r[:2] == ["naive", "test_error"]]
    assert [r[2] for r in curve_rows] == naive["alphas"]
    assert [r[3] for r in curve_rows] == pytest.approx(naive["curves"]["test_error"])


def _config(*trackers, mode=""):
    c = base_config()
    c.log.trackers = trackers
    c.log.wandb_mode = mode
    return c


def test_a_selected_tracker_whose_package_is_missing_names_the_extra(monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name: None if name == "tensorboardX" else real(name))  # fmt: skip
    with pytest.raises(UserError, match=r"tensorboardX package: pip install 'lmc\[tensorboard\]'"):
        tracking.validate(_config("tensorboard"))
    assert tracking.validate(_config()) == []  # nothing selected: nothing needed


@pytest.mark.parametrize(
    "config, message",
    [
        (_config("tensorbord"), "unknown tracker 'tensorbord'; valid trackers: tensorboard, wandb"),
        (_config(mode="ofline"), "config.log.wandb_mode must be one of"),
    ],
)
def test_bad_tracker_settings_are_user_errors(config, message):
    with pytest.raises(UserError, match=message):
        tracking.validate(config)


def test_trackers_from_the_command_line_as_a_comma_list():
    # `--config.log.trackers=tensorboard,wandb` arrives as ("tensorboard,wandb",)
    assert tracking.validate(_config("tensorboard,wandb")) == ["tensorboard", "wandb"]
    assert tracking.validate(_config(" tensorboard ")) == ["tensorboard"]


def test_the_default_install_needs_neither_package():
    """No lmc module imports tensorboardX or wandb when it is imported (only a selected
    tracker does, when it starts); with nothing selected, validation needs neither."""
    optional = {"tensorboardX", "tensorboard", "wandb"}
    for path in sorted((ROOT / "lmc").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: imports inside functions are lazy
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & optional, (path, names)
    assert tracking.validate(base_config()) == []


def test_wandb_that_cannot_start_is_a_user_error_saying_what_to_do(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def no_key(**_):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    with pytest.raises(UserError) as e:
        tracking.open_trackers(_config("wandb"), tmp_path / "w", {})
    message = str(e.value)
    assert "No API key configured" in message and "wandb login" in message
    assert "config.log.wandb_mode=offline" in message
