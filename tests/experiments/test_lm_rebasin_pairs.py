"""benchmarks/lm_rebasin_pairs.py keeps the finished pairs when a run is stopped later."""

import json

from benchmarks.lm_rebasin_pairs import write_pairs
from configs.lm_rebasin import get_config


def entry(value):
    metrics = ("train_loss", "train_error", "test_loss", "test_error")
    return {"barrier": dict.fromkeys(metrics, value), "barrier_vs_mean": dict.fromkeys(metrics, value),
            "traceback": "dropped"}  # fmt: skip


def test_pairs_file_is_rewritten_after_every_pair(tmp_path):
    path, pairs, timings = tmp_path / "pairs.json", [], []
    for p, value in enumerate((2.0, 4.0)):
        pairs.append({"pair": p, "endpoints": {}, "methods": {"naive": entry(value)}})
        timings.append({"pair": p, "train_or_load_s": 0.0})
        write_pairs(path, get_config(), 0, ["naive"], pairs, timings)
        out = json.loads(path.read_text())
        assert [q["pair"] for q in out["pairs"]] == list(range(p + 1))
        assert "traceback" not in out["pairs"][0]["methods"]["naive"]
    assert out["summary"]["naive"]["barrier_mean"]["test_loss"] == 3.0
    assert not list(tmp_path.glob("*.tmp"))
