"""Pieces shared by the language-model experiments (`lm_pair`, `lm_instability`,
`lm_code_vs_prose`): text data and transformer from config, per-domain metrics
(perplexity, bits per byte), weight matching with the transformer's oracle spec, and
the LM base config.

Evaluation is `lmc.evaluate`'s, which treats labels of shape (N, T) as N*T label
positions (per-token means); curves therefore have the usual form
(`{"alphas", "<split>_loss", "<split>_error"}`) and `method_entry`, `barriers`, the
report and the curve plot work on them unchanged.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from lmc import data as data_lib
from lmc import models
from lmc.errors import UserError

DATA_OPTIONS = (
    "context",
    "eval_windows",
    "test_fraction",
    "max_bytes",
    "mix",
    "code_dir",
    "prose_dir",
)
LM_METHODS = ("naive", "weight_matching")


# ---- data and model ----------------------------------------------------------------
def load_data(config, name: str | None = None):
    """The `text:<source>` dataset of `config.data` (or source `name`)."""
    name = name or config.data.name
    if not str(name).startswith("text:"):
        raise UserError(
            f"language-model experiments need text data: set config.data.name to one of "
            f"text:code, text:prose, text:mixed, text:dir (got {name!r})"
        )
    options = {k: config.data.get(k) for k in DATA_OPTIONS if config.data.get(k) is not None}
    return data_lib.load(name, config.data.get("dir") or None, **options)


def load_model(config, dataset) -> models.Model:
    if config.model.name != "transformer":
        raise UserError(
            f"language-model experiments need config.model.name='transformer' "
            f"(got {config.model.name!r})"
        )
    model_context = int(config.model.get("context") or 64)
    if dataset.context > model_context:
        raise UserError(
            f"config.data.context={dataset.context} exceeds config.model.context={model_context} "
            "(the number of learned positions); make them equal"
        )
    return models.from_config(config.model, dataset.num_classes)


def validate_methods(config) -> None:
    methods = list(config.eval.methods)
    if not methods:
        raise UserError("config.eval.methods is empty; give at least 'naive'")
    for m in methods:
        if m not in LM_METHODS:
            raise UserError(
                f"method {m!r} is not supported for language models; valid: {', '.join(LM_METHODS)}"
                " (the transformer has no BatchNorm to reset; REPAIR for LayerNorm models is not "
                "implemented)"
            )
    if int(config.eval.num_alphas) < 3:
        raise UserError(f"config.eval.num_alphas must be at least 3, got {config.eval.num_alphas}")


# ---- evaluation ---------------------------------------------------------------------
def lerp(a, b, alpha):
    return jax.tree.map(lambda x, y: ((1 - alpha) * x + alpha * y).astype(x.dtype), a, b)


def curve(
    apply_fn, endpoint_a: dict, endpoint_b: dict, splits: dict, alphas, batch_size: int = 64
) -> dict:
    """Mean per-token loss and next-token error of (1-a)*A + a*B on each split
    (`lmc.evaluate.interpolation_curve` without normalization correction; it counts
    every label position of (N, T) labels).

    `splits`: {name: (x, y)}; `alphas`: a count (evenly spaced 0..1) or a list.
    """
    from lmc import evaluate as evaluate_lib

    return evaluate_lib.interpolation_curve(
        apply_fn, endpoint_a, endpoint_b, splits, alphas=alphas, norm="none", batch_size=batch_size
    )


def evaluate(apply_fn, endpoint: dict, splits: dict, batch_size: int = 64) -> dict:
    """`{"<split>_loss": ..., "<split>_error": ...}` of one network (= a curve's alpha-0 end)."""
    from lmc import evaluate as evaluate_lib

    return evaluate_lib.evaluate(apply_fn, endpoint, splits, batch_size=batch_size)


def domain_metrics(flat: dict, domains) -> dict:
    """{"code_loss": ...} -> {"code": {loss, perplexity, bits_per_byte, error}, ..., "mean": ...}."""
    out = {}
    for d in domains:
        loss, err = flat[f"{d}_loss"], flat[f"{d}_error"]
        out[d] = {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": loss / math.log(2),
            "error": err,
        }
    mean_loss = float(np.mean([out[d]["loss"] for d in domains]))
    out["mean"] = {
        "loss": mean_loss,
        "perplexity": math.exp(min(mean_loss, 700.0)),
        "bits_per_byte": mean_loss / math.log(2),
        "error": float(np.mean([out[d]["error"] for d in domains])),
    }
    return out


def with_perplexity(metrics: dict) -> dict:
    """Add `<split>_perplexity` next to every `<split>_loss`."""
    out = dict(metrics)
    for k, v in metrics.items():
        if k.endswith("_loss"):
            out[k[: -len("_loss")] + "_perplexity"] = math.exp(min(v, 700.0))
    return out


# ---- alignment ----------------------------------------------------------------------
def align_weight_matching(config, endpoint_a: dict, endpoint_b: dict) -> tuple[dict, dict]:
    """B permuted to match A (weight matching over the transformer's oracle spec)."""
    from lmc import align
    from lmc.align.transformer_oracle import transformer_spec

    t0 = time.perf_counter()
    tree_b = {"params": endpoint_b["params"], "model_state": endpoint_b.get("model_state") or {}}
    spec = transformer_spec(tree_b)
    perms, info = align.weight_matching(
        spec,
        endpoint_a["params"],
        endpoint_b["params"],
        key=jax.random.key(int(config.align.seed)),
        max_iter=int(config.align.max_iter),
    )
    aligned = align.apply_permutation(spec, perms, tree_b)
    moved = {n: float(np.mean(np.asarray(p) != np.arange(len(p)))) for n, p in perms.items()}
    extra = {
        "sweeps": int(info["sweeps"]),
        "align_s": round(time.perf_counter() - t0, 3),
        "fraction_moved": moved,
    }
    return aligned, extra


def aligned_endpoint(method: str, config, endpoint_a: dict, endpoint_b: dict):
    if method == "naive":
        return endpoint_b, {}
    if method == "weight_matching":
        return align_weight_matching(config, endpoint_a, endpoint_b)
    raise UserError(f"unknown LM method {method!r}; valid: {', '.join(LM_METHODS)}")


def compare_pair(config, model, splits: dict, ea: dict, eb: dict, methods=None) -> dict:
    """results.json `methods` entries (curves, barriers) for each method, as `pair` does."""
    import logging
    import traceback

    from lmc import evaluate as evaluate_lib

    out = {}
    for method in methods or config.eval.methods:
        try:
            aligned, info = aligned_endpoint(method, config, ea, eb)
            c = curve(
                model.apply,
                ea,
                aligned,
                splits,
                int(config.eval.num_alphas),
                int(config.eval.batch_size),
            )
            out[method] = {**evaluate_lib.method_entry(c), **info}
        except UserError:
            raise
        except Exception as e:  # one broken method must not cost the others
            logging.getLogger(__name__).error("method %s failed: %s", method, e)
            out[method] = {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=5),
            }
    return out


def train_test_splits(config, dataset) -> dict:
    """The standard `train`/`test` splits (fixed held-in and held-out windows)."""
    n = int(config.eval.get("train_subset") or 0) or None
    return {
        "train": (dataset.train_x[:n], dataset.train_y[:n]),
        "test": (dataset.test_x, dataset.test_y),
    }


# ---- configs ------------------------------------------------------------------------
def lm_base_config():
    """`lmc.config_base.base_config()` with the LM defaults the `configs/lm_*.py` share:
    a 2-layer, width-128, 4-head byte-level transformer with 64-byte context, trained
    with Adam (warmup + cosine) on batches of 16 windows. Sized to train in minutes on
    2 CPU cores."""
    import ml_collections

    from lmc.config_base import base_config

    c = base_config()
    c.data.name = "text:mixed"
    c.data.context = 64
    c.data.eval_windows = 96  # fixed evaluation windows per domain and split
    c.data.test_fraction = 0.1  # fraction of files held out (by hash of the path)
    c.data.max_bytes = 4_000_000  # per domain and split
    c.data.mix = 0.5  # text:mixed: probability that a training window is code
    c.data.code_dir = ""  # "" = the Python standard library
    c.data.prose_dir = ""  # "" = /usr/share/doc/python3.11/html/_sources

    c.model.name = "transformer"
    c.model.width = 128
    c.model.depth = 2
    c.model.heads = 4
    c.model.context = 64
    c.model.mlp_ratio = 4
    c.model.positions = "learned"  # "rotary" removes the within-head Q/K permutation
    c.model.norm = "layernorm"

    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 4e-3  # best of {2e-3, 4e-3, 8e-3} at 300 steps
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 50
    c.batch_size = 16
    c.num_steps = 400
    c.log_every_steps = 50

    c.eval.num_alphas = 9
    c.eval.batch_size = 128
    c.eval.train_subset = 0  # LM: the fixed held-in windows (config.data.eval_windows)
    c.eval.methods = ("naive", "weight_matching")

    c.lm = ml_collections.ConfigDict()
    c.lm.spawn_steps = (0, 80, 200)
    c.lm.scales = (0.5, 1.0)
    c.lm.independent = True
    return c
