"""`lm_pair`: the `pair` experiment for transformer language models on text data.

Two siblings (independent inits, or children spawned from a parent's step k), then
for each of `config.eval.methods` ("naive", "weight_matching" with the transformer's
hand-written permutation spec) the interpolation curve and barriers of per-token loss
and next-token error on fixed held-in (train) and held-out (test) windows. The
results.json has the same form as `pair`'s (so `lmc report` and the curve plot work);
endpoints also carry perplexities.
"""

from __future__ import annotations

from pathlib import Path

from lmc import spawn
from lmc.experiments import lm_common


def validate(config) -> None:
    dataset = lm_common.load_data(config)
    lm_common.load_model(config, dataset)
    lm_common.validate_methods(config)
    spawn.validate(config, dataset, [config.spawn.step])
    spawn.child_seeds(config, 1)


def run(config, workdir: Path) -> dict:
    dataset = lm_common.load_data(config)
    model = lm_common.load_model(config, dataset)
    states = spawn.make_siblings(config, workdir, model, dataset, num_children=2)
    ea, eb = (spawn.endpoint(s) for s in states)
    splits = lm_common.train_test_splits(config, dataset)
    bs = int(config.eval.batch_size)
    endpoints = {
        name: lm_common.with_perplexity(lm_common.evaluate(model.apply, e, splits, bs))
        for name, e in (("a", ea), ("b", eb))
    }
    return {
        "data": dataset.summary(),
        "endpoints": endpoints,
        "methods": lm_common.compare_pair(config, model, splits, ea, eb),
    }
