"""Barriers of several independent transformer pairs, every alignment method (issue 14).

Trains `--pairs` pairs of `configs/lm_rebasin.py` (pair p: child seeds 2p+1, 2p+2, i.e.
independent inits and data orders), sequentially, one training process, resuming
from the checkpoints in `--workdir`; then measures the interpolation curve of each
method of `--methods` on each pair with the experiment engine (`compare_pair`), and
writes `pairs.json` (per-pair barriers and mean/std per method) and prints a table.

    PYTHONPATH=. python benchmarks/lm_rebasin_pairs.py --workdir=/tmp/lm/pairs --pairs=3
    PYTHONPATH=. python benchmarks/lm_rebasin_pairs.py --workdir=/tmp/lm/pairs --train_only
    PYTHONPATH=. python benchmarks/lm_rebasin_pairs.py --workdir=/tmp/lm/w64 \\
        --set model.width=64 --methods naive,weight_matching_heads

`--set key=value` overrides config keys (values parsed as Python literals). The
training-length trend: `--at_step=S` evaluates the checkpoints of step S instead of the
final ones (needs `--set checkpoint.every_steps=...` while training).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import time
from pathlib import Path

import numpy as np

from configs.lm_rebasin import get_config
from lmc import training
from lmc.experiments.common import compare, setup, tables

DEFAULT_METHODS = (
    "naive",
    "activation_matching",
    "activation_matching_heads",
    "weight_matching",
    "weight_matching_heads",
    "weight_matching_orthogonal",
    "learned_matching",
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--first_pair", type=int, default=0)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--train_only", action="store_true")
    p.add_argument(
        "--at_step",
        type=int,
        default=0,
        help="evaluate the children's checkpoints of this step instead of the final ones "
        "(the training-length trend; checkpoints every config.checkpoint.every_steps)",
    )
    p.add_argument("--out", default="pairs.json", help="file name inside --workdir")
    p.add_argument(
        "--plot",
        default="",
        help="only plot: loss curves (metrics.jsonl) and barrier curves of the pairs.json "
        "files given (comma-separated, inside --workdir) into this PNG path prefix",
    )
    p.add_argument(
        "--trend",
        default="",
        help="only plot: test-loss barrier versus training step from the pairs.json files "
        "given with --out (one per --at_step, comma-separated) into this PNG path",
    )
    return p.parse_args()


def plot_trend(root: Path, names: list[str], path: str) -> None:
    """Barrier (mean and each pair) versus the training step the pairs were taken at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads((root / name).read_text()) for name in names]
    runs.sort(key=lambda r: r.get("at_step") or r["config"]["num_steps"])
    steps = [r.get("at_step") or r["config"]["num_steps"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in runs[0]["methods"]:
        values = np.array([[p["methods"][method]["barrier"]["test_loss"] for p in r["pairs"]]
                           for r in runs])  # fmt: skip
        line = ax.plot(steps, values.mean(axis=1), "o-", label=f"{method} (mean)")[0]
        for column in values.T:
            ax.plot(steps, column, ".", color=line.get_color(), alpha=0.5)
    ax.set(xlabel="training step of both models", ylabel="test-loss barrier (nats/byte)",
           title="lm_rebasin: barrier versus training length (dots: pairs)")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(root: Path, names: list[str], prefix: str) -> None:
    """<prefix>_loss.png: training/held-out loss of every child; <prefix>_curves.png:
    held-out loss along the path, mean over pairs, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in sorted(root.glob("pair*/child_*/metrics.jsonl")):
        rows = [json.loads(line) for line in run.read_text().splitlines() if line.strip()]
        label = f"{run.parent.parent.name}/{run.parent.name}"
        ax.plot([r["step"] for r in rows], [r["train_loss"] for r in rows], lw=0.6, alpha=0.5)
        test = [r for r in rows if "test_loss" in r]
        ax.plot([r["step"] for r in test], [r["test_loss"] for r in test], "o-", ms=3,
                label=label)  # fmt: skip
    ax.set(xlabel="step", ylabel="loss (nats/byte)", title="lm_rebasin: train (thin), held-out")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(f"{prefix}_loss.png", dpi=120)
    pairs = [p for name in names for p in json.loads((root / name).read_text())["pairs"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in pairs[0]["methods"]:
        curves = [p["methods"][method]["curves"]["test_loss"] for p in pairs
                  if "curves" in p["methods"].get(method, {})]  # fmt: skip
        if not curves:
            continue
        alphas = pairs[0]["methods"][method]["alphas"]
        mean = np.mean(curves, axis=0)
        ax.plot(alphas, mean, "o-", ms=3, label=f"{method} ({len(curves)} pairs)")
    ax.set(xlabel="alpha (A -> aligned B)", ylabel="held-out loss (nats/byte)",
           title="lm_rebasin: loss along the path, mean over pairs")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{prefix}_curves.png", dpi=120)


def build_config(overrides):
    c = get_config()
    with c.unlocked():
        for item in overrides:
            key, _, value = item.partition("=")
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
            node = c
            *parents, leaf = key.split(".")
            for k in parents:
                node = node[k]
            node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], float) else value
    return c


def pair_config(config, p: int):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.spawn.child_seeds = (2 * p + 1, 2 * p + 2)
    return c


def endpoints_at(config, model, dataset, pair_dir: Path, step: int) -> list[dict]:
    """The two children's endpoints at checkpoint `step` (a clear error if not kept)."""
    from lmc.runtime.checkpoint import Checkpointer
    from lmc.training import state as state_lib
    from lmc.training.siblings import child_seeds

    optimizer = state_lib.make_optimizer_for(config, state_lib.total_steps(config, dataset))
    out = []
    for i in (0, 1):
        template = state_lib.init_state(
            model, optimizer, child_seeds(config, i).init, dataset.train_x[:1]
        )
        ckpt = Checkpointer(pair_dir / f"child_{i}" / "checkpoints", every_steps=1)
        try:
            if step not in ckpt.steps():
                raise SystemExit(
                    f"--at_step={step}: {pair_dir}/child_{i} keeps checkpoints {ckpt.steps()}"
                )
            out.append(state_lib.endpoint(ckpt.restore(step, template)))
        finally:
            ckpt.close()
    return out


def write_pairs(path: Path, config, at_step: int, methods, pairs, timings) -> dict:
    """Write the pairs measured so far (atomically) to `path`; returns their summary."""
    summary = compare.summarize([p["methods"] for p in pairs])
    out = {
        "config": config.to_dict(),
        "at_step": at_step or None,
        "methods": methods,
        "pairs": [
            {
                "pair": p["pair"],
                "endpoints": p["endpoints"],
                "methods": {
                    m: {k: v for k, v in e.items() if k != "traceback"}
                    for m, e in p["methods"].items()
                },
            }
            for p in pairs
        ],
        "summary": summary,
        "timings": timings,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1, default=float))
    tmp.replace(path)
    return summary


def main():
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.plot:
        plot(Path(args.workdir), args.out.split(","), args.plot)
        return
    if args.trend:
        plot_trend(Path(args.workdir), args.out.split(","), args.trend)
        return
    config = build_config(args.set)
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    dataset = setup.load_data(config)
    model = setup.load_model(config, dataset)
    methods = [m for m in args.methods.split(",") if m]
    pairs, timings, summary = [], [], {}
    for p in range(args.first_pair, args.first_pair + args.pairs):
        c = pair_config(config, p)
        t0 = time.perf_counter()
        ea, eb = training.siblings(c, root / f"pair{p}", model, dataset, (0, 1))
        train_s = time.perf_counter() - t0
        if args.train_only:
            timings.append({"pair": p, "train_or_load_s": round(train_s, 1)})
            continue
        if args.at_step:
            ea, eb = endpoints_at(c, model, dataset, root / f"pair{p}", args.at_step)
        endpoints = compare.endpoint_metrics(c, model, dataset, {"a": ea, "b": eb})
        entries = compare.compare_pair(c, model, dataset, ea, eb, methods)
        pairs.append({"pair": p, "endpoints": endpoints, "methods": entries})
        row = {m: e.get("barrier", {}).get("test_loss", e.get("error")) for m, e in entries.items()}
        print(f"pair {p}: test-loss barrier", json.dumps(row), flush=True)
        timings.append({"pair": p, "train_or_load_s": round(train_s, 1)})
        # after every pair: a run stopped later keeps the finished pairs' details
        summary = write_pairs(root / args.out, config, args.at_step, methods, pairs, timings)
    if args.train_only:
        print(json.dumps(timings))
        return
    naive = (
        np.array([p["methods"]["naive"]["barrier"]["test_loss"] for p in pairs])
        if ("naive" in methods)
        else None
    )
    print("| method | test-loss barrier (mean ± std) | fraction of naive |")
    print("|---|---|---|")
    for m, s in tables.same_shape_first({m: summary.get(m, {}) for m in methods}):
        if "barrier_mean" not in s:
            print(f"| {m} | failed: {s.get('error')} | |")
            continue
        vals = np.array([p["methods"][m]["barrier"]["test_loss"] for p in pairs])
        frac = "" if naive is None else f"{np.mean(vals / naive):.2f}"
        print(
            f"| {tables.label(m, s)} | {s['barrier_mean']['test_loss']:.3f} ± "
            f"{s['barrier_std']['test_loss']:.3f}"
            f" | {frac} |"
        )


if __name__ == "__main__":
    main()
