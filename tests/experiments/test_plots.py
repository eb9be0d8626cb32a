"""Plots from results.json-shaped dicts alone."""

import json
import math

import numpy as np
import pytest

from lmc import evaluate, plots


def fake_method(bump: float, alphas) -> dict:
    a = np.asarray(alphas)
    hill = bump * 4 * a * (1 - a)
    curve = {
        "alphas": list(alphas),
        "train_loss": list(0.05 + hill),
        "train_error": list(0.01 + hill / 5),
        "test_loss": list(0.10 + 1.2 * hill),
        "test_error": list(0.03 + hill / 4),
    }
    return evaluate.method_entry(curve)


def fake_results() -> dict:
    alphas = np.linspace(0, 1, 25).tolist()
    results = {
        "schema_version": 1,
        "complete": True,
        "experiment": "pair",
        "config": {
            "model": {"name": "mlp", "width": 512, "norm": "none"},
            "data": {"name": "digits"},
        },
        "methods": {
            "naive": fake_method(1.0, alphas),
            "naive+repair": fake_method(0.4, alphas),
            "weight_matching": fake_method(0.08, alphas),
            "ste": {"error": "RuntimeError: boom"},
        },
    }
    return json.loads(json.dumps(results))  # exactly what a reader of results.json gets


def fake_sweep() -> dict:
    points = []
    for k, scale in ((0, 1.0), (100, 0.7), (1000, 0.2), (5000, 0.05), (10000, 0.02)):
        methods = {}
        for name, factor in (("naive", 1.0), ("weight_matching", 0.3)):
            mean = {m: scale * factor for m in evaluate.METRICS}
            std = {m: 0.1 * scale * factor for m in evaluate.METRICS}
            methods[name] = {"num_pairs": 3, "barrier_mean": mean, "barrier_std": std,
                             "barrier_vs_mean_mean": mean, "barrier_vs_mean_std": std}  # fmt: skip
        points.append({"spawn_step": k, "methods": methods})
    points[2]["methods"]["weight_matching"] = {"error": "failed"}
    return {"experiment": "instability", "config": {}, "sweep_key": "spawn_step", "points": points}


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_curves_writes_a_png_atomically(tmp_path):
    out = plots.plot_curves(fake_results(), tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and is_png(out) and out.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]  # no temp file left
    plots.plot_curves(fake_results(), out)  # overwriting is fine
    assert is_png(out)


def test_plot_curves_needs_a_curve(tmp_path):
    with pytest.raises(ValueError, match="no method with curves"):
        plots.plot_curves({"methods": {"naive": {"error": "x"}}}, tmp_path / "c.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["barrier", "barrier_vs_mean"])
def test_plot_sweep(tmp_path, kind):
    out = plots.plot_sweep(fake_sweep(), tmp_path / "sweep.png", "spawn_step", kind=kind)
    assert is_png(out)


def test_plot_sweep_without_points_for_the_key(tmp_path):
    with pytest.raises(ValueError, match="'width'"):
        plots.plot_sweep(fake_sweep(), tmp_path / "s.png", "width")


def test_plot_curves_tolerates_infinite_barriers(tmp_path):
    results = fake_results()
    results["methods"]["naive"]["barrier"]["test_loss"] = math.inf
    assert is_png(plots.plot_curves(results, tmp_path / "c.png"))
