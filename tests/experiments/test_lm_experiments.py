"""Language models through the one experiment engine, end to end on tiny corpora:
pair (every alignment method), instability, width, merge_many and code_vs_prose."""

import json

import numpy as np
import pytest
from helpers import tiny_lm_config

from lmc.errors import UserError
from lmc.experiments import code_vs_prose, run_experiment


def test_code_vs_prose_end_to_end(tmp_path):
    c = tiny_lm_config(tmp_path, "code_vs_prose")
    c.spawn.population = True  # the code and prose children train as one population
    results = run_experiment(c, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["complete"] and on_disk["experiment"] == "code_vs_prose"
    assert list((tmp_path / "run" / "k0").glob("population_*"))
    per_domain = {"code", "prose", "mean"}
    metric_keys = {"loss", "perplexity", "bits_per_byte", "error"}
    assert set(results["mixture"]) == per_domain
    assert set(results["mixture"]["code"]) == metric_keys
    assert [p["spawn_step"] for p in results["spawn"]] == [0]
    for point in results["spawn"]:
        models = point["models"]
        assert set(models) == {
            "parent_at_k",
            "code_child",
            "prose_child",
            "average",
            "task_arithmetic_s0.5",
            "task_arithmetic_s1",
        }
        for m in models.values():
            assert set(m) == per_domain and np.isfinite(m["code"]["loss"])
        # Task arithmetic at s = 0.5 is the average, up to float rounding.
        assert models["task_arithmetic_s0.5"]["mean"]["loss"] == pytest.approx(
            models["average"]["mean"]["loss"], rel=1e-4
        )
        curve = point["curve"]
        assert curve["alphas"] == [0.0, 0.5, 1.0]
        assert set(curve["curves"]) == {f"{d}_{m}" for d in per_domain for m in ("loss", "error")}
        assert curve["curves"]["code_loss"][0] == models["code_child"]["code"]["loss"]
        assert "code_loss" in curve["barrier"]
    ind = results["independent"]
    assert set(ind["methods"]) == {"naive", "weight_matching"}
    assert set(ind["models"]) == {"code_child", "prose_child", "average", "average_weight_matching"}
    assert ind["methods"]["weight_matching"]["sweeps"] >= 1
    assert ind["init_seeds"][0] != ind["init_seeds"][1]
    # k=0's code child is the independent pair's code child: same init, same data.
    assert ind["models"]["code_child"] == results["spawn"][0]["models"]["code_child"]
    png = tmp_path / "run" / code_vs_prose.PLOT_FILE
    assert png.read_bytes()[:4] == b"\x89PNG"
    from lmc.cli.report import report_dirs

    assert "task_arithmetic_s1" in report_dirs([str(tmp_path / "run")])


def test_lm_pair_runs_every_alignment_method(tmp_path):
    c = tiny_lm_config(tmp_path, "pair")
    c.data.name = "text:code"
    c.eval.methods = ("naive", "weight_matching", "activation_matching", "ste",
                      "weight_matching_orthogonal", "learned_matching",
                      "weight_matching+repair")  # fmt: skip
    c.align.ste_steps = 3
    c.align.learned_steps = 3
    c.align.activation_batches = 2
    results = run_experiment(c, tmp_path / "pair")
    assert set(results["endpoints"]["a"]) >= {
        "train_loss", "test_loss", "test_error", "test_perplexity", "test_bits_per_byte",
    }  # fmt: skip
    assert "code" in results["data"]
    for method in c.eval.methods:
        entry = results["methods"][method]
        assert "error" not in entry, (method, entry.get("traceback"))
        assert set(entry["barrier"]) == {"train_loss", "train_error", "test_loss", "test_error"}
        assert len(entry["curves"]["test_loss"]) == 3
    learned = results["methods"]["learned_matching"]
    assert learned["steps"] == 3 and len(learned["learned_classes"]) == 2  # QK, VO per head
    assert (tmp_path / "pair" / "curves.png").exists()


def test_lm_instability_width_and_merge_many_run(tmp_path):
    c = tiny_lm_config(tmp_path, "instability")
    c.data.name = "text:code"
    c.spawn.mode = "spawn"
    c.instability.spawn_steps = (0, 3)
    c.eval.methods = ("naive",)
    results = run_experiment(c, tmp_path / "instab")
    assert [p["spawn_step"] for p in results["points"]] == [0, 3]
    assert "barrier_mean" in results["points"][0]["methods"]["naive"]
    assert (tmp_path / "instab" / "barrier_vs_k.png").exists()

    c = tiny_lm_config(tmp_path, "width")
    c.data.name = "text:code"
    c.width.multipliers = (1.0, 2.0)  # d_model 16 and 32, 2 heads each
    results = run_experiment(c, tmp_path / "width")
    assert [p["model_width"] for p in results["points"]] == [16, 32]
    for point in results["points"]:
        assert set(point["methods"]) == {"naive", "weight_matching"}
        assert "error" not in point["methods"]["weight_matching"]

    c = tiny_lm_config(tmp_path, "merge_many")
    c.data.name = "text:code"
    c.merge.num_models = 3
    c.spawn.child_seeds = (1, 2, 3)
    results = run_experiment(c, tmp_path / "merge")
    assert len(results["models"]) == 3
    assert "test_perplexity" in results["merged"]
    assert (tmp_path / "merge" / "merge.png").exists()


def test_lm_configs_validate_and_reject_bad_settings(tmp_path):
    from configs import instability_lm, lm_rebasin
    from configs import lm_code_vs_prose as cfg_cvp

    for module in (cfg_cvp, lm_rebasin, instability_lm):
        c = module.get_config()
        assert c.model.name == "transformer" and c.data.name.startswith("text:")
    c = tiny_lm_config(tmp_path, "code_vs_prose")
    c.instability.spawn_steps = (0, 6)  # 6 = num_steps
    with pytest.raises(UserError, match="spawn_steps"):
        code_vs_prose.validate(c)
    c = tiny_lm_config(tmp_path, "code_vs_prose")
    c.eval.methods = ("naive+reset",)
    with pytest.raises(UserError, match="has none; use \\+repair"):
        code_vs_prose.validate(c)
    c = tiny_lm_config(tmp_path, "code_vs_prose")
    c.data.context = 32
    with pytest.raises(UserError, match="config.model.context"):
        code_vs_prose.validate(c)
    c = tiny_lm_config(tmp_path, "code_vs_prose")
    c.data.name = "text:code"
    with pytest.raises(UserError, match="text:mixed"):
        code_vs_prose.validate(c)
    c = tiny_lm_config(tmp_path, "pair")
    c.model.name = "mlp"
    with pytest.raises(UserError, match="does not fit"):
        run_experiment(c, tmp_path / "bad")
