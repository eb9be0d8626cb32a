"""`code_vs_prose`: can a code model and a prose model be averaged into one?

A parent language model is trained on a code+prose mixture (`text:mixed`). At each
spawn step k of `config.instability.spawn_steps` it is forked: child A continues on code only,
child B on prose only, both to the same total step count N. Every model is evaluated
on held-out code and held-out prose (per-token loss, perplexity, bits per byte,
next-byte error):

- `parent_at_k`      the shared starting point theta_k
- `code_child`, `prose_child`   the specialists theta_A, theta_B
- `average`          (theta_A + theta_B) / 2 (the curve's alpha = 0.5)
- `task_arithmetic_s<s>`  theta_k + s * ((theta_A - theta_k) + (theta_B - theta_k)) for
                     each s in `config.lm.scales` (s = 0.5 is exactly the average)
- the full interpolation curve theta_A -> theta_B with its barriers
- `mixture` (top level): the parent itself continued on the mixture to step N, i.e.
  a model trained on the mixture for the same total number of steps

k = 0 forks at initialization: the children share the init only, nothing of training.
With `config.lm.independent`, the prose child is also trained from a *different*
init (seed `config.spawn.child_seeds[1]`), and the pair is averaged after each
method of `config.eval.methods` (naive, weight matching, ... over the traced spec):
the Git Re-Basin question for LMs.

Workdir: parent/ (mixture, every spawn step kept), k<k>/code, k<k>/prose,
independent/prose; results.json; code_vs_prose.png (per-domain loss along the
interpolation paths). Children are trained by `lmc.training.train_children` like every
experiment's (as one population with `config.spawn.population`).

    lmc run --config=configs/lm_code_vs_prose.py --workdir=runs/lm_code_vs_prose
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import jax
import numpy as np

from lmc import evaluate, training
from lmc.errors import UserError
from lmc.evaluate import barriers
from lmc.evaluate.metrics import domain_metrics
from lmc.experiments.common import methods as methods_lib
from lmc.experiments.common import setup, tables
from lmc.experiments.instability import spawn_steps
from lmc.runtime import io as lmc_io
from lmc.runtime.io import write_bytes_atomic

log = logging.getLogger(__name__)

DOMAINS = ("code", "prose")
PLOT_FILE = "code_vs_prose.png"
ALIGNED_COLORS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


# ---- config -------------------------------------------------------------------------
def scales(config) -> list[float]:
    return [float(s) for s in config.lm.scales]


def validate(config) -> None:
    if config.data.name != "text:mixed":
        raise UserError(
            f"code_vs_prose trains its parent on the code+prose mixture: set "
            f"config.data.name='text:mixed' (got {config.data.name!r})"
        )
    dataset = setup.load_data(config)
    model = setup.load_model(config, dataset)
    methods_lib.validate_methods(config, setup.has_batchnorm(model, dataset))
    n = training.total_steps(config, dataset)
    for k in spawn_steps(config):
        if not 0 <= k < n:
            raise UserError(
                f"config.instability.spawn_steps: {k} is not in [0, total steps={n}); lower it "
                "or train longer (config.num_steps)"
            )
    training.check_num_children(config, 2, "code_vs_prose (code child, prose child)")
    seeds = tuple(config.spawn.child_seeds)
    if config.lm.independent and int(seeds[1]) == int(config.seed):
        raise UserError(
            f"config.lm.independent: the independent prose child's init seed "
            f"config.spawn.child_seeds[1]={seeds[1]} equals config.seed; pick another seed"
        )


# ---- the experiment -----------------------------------------------------------------
def run(config, workdir: Path, parent: Path | None = None) -> dict:
    del parent  # not offered (no parent_steps): each width / the mixture trains its own
    mixed = setup.load_data(config)
    model = setup.load_model(config, mixed)
    domain_data = {d: mixed.only(d) for d in DOMAINS}
    ks = spawn_steps(config)
    n = training.total_steps(config, mixed)
    child_seed = [int(s) for s in tuple(config.spawn.child_seeds)[:2]]
    parent_seeds = training.parent_seeds(config)
    ev = Evaluator(model, mixed.eval_splits("test"), int(config.eval.batch_size),
                   int(config.eval.num_alphas))  # fmt: skip

    # The parent, trained on the mixture all the way: the "mixture for N steps" baseline.
    parent = training.train(
        model=model, dataset=mixed, config=config, run_dir=workdir / "parent",
        seeds=parent_seeds, keep_steps=ks, name="parent",
    )  # fmt: skip
    results = {
        "domains": list(DOMAINS),
        "data": mixed.summary(),
        "total_steps": n,
        "scales": scales(config),
        "mixture": ev.metrics(training.endpoint(parent)),
        "spawn": [],
    }

    def specialists(k):
        return [
            training.Child(i, workdir / f"k{k}" / d, k, domain_data[d],
                           training.Seeds(parent_seeds.init, child_seed[i], child_seed[i]))
            for i, d in enumerate(DOMAINS)
        ]  # fmt: skip

    children = {}
    for k in ks:
        theta_k = training.endpoint(training.load_parent(config, workdir, model, mixed, k))
        ea, eb = training.train_children(config, workdir, model, mixed, specialists(k))
        children[k] = {"code": ea, "prose": eb}
        entry = ev.path(ea, eb)
        models = {
            "parent_at_k": ev.metrics(theta_k),
            "code_child": ev.end(entry, 0),
            "prose_child": ev.end(entry, -1),
            "average": ev.midpoint(entry, ea, eb),
        }
        for s in scales(config):
            models[f"task_arithmetic_s{s:g}"] = ev.metrics(task_arithmetic(theta_k, ea, eb, s))
        distances = {
            "code_child_from_parent_at_k": distance(ea, theta_k),
            "prose_child_from_parent_at_k": distance(eb, theta_k),
            "code_child_to_prose_child": distance(ea, eb),
            "parent_at_k_norm": distance(theta_k, None),
        }
        results["spawn"].append(
            {"spawn_step": k, "models": models, "curve": entry, "distances": distances}
        )
        log.info(
            "k=%d: mean loss code child %.3f, prose child %.3f, average %.3f, mixture %.3f",
            k, models["code_child"]["mean"]["loss"], models["prose_child"]["mean"]["loss"],
            models["average"]["mean"]["loss"], results["mixture"]["mean"]["loss"],
        )  # fmt: skip

    if config.lm.independent:
        results["independent"] = independent(
            config, workdir, model, mixed, domain_data, children, child_seed, ev
        )
    return results


class Evaluator:
    """Per-domain metrics of single networks and of interpolation paths (held-out files):
    the one evaluator with one split per domain."""

    def __init__(self, model, splits: dict, batch_size: int, num_alphas: int):
        self.model, self.splits = model, splits
        self.batch_size, self.num_alphas = batch_size, num_alphas

    def metrics(self, endpoint: dict) -> dict:
        flat = evaluate.evaluate(self.model.apply, endpoint, self.splits,
                                 batch_size=self.batch_size)  # fmt: skip
        return domain_metrics(flat, DOMAINS)

    def path(self, ea: dict, eb: dict, norm: str | None = "none") -> dict:
        """Curves of every domain's (and their mean's) loss and error, with barriers."""
        c = evaluate.interpolation_curve(
            self.model.apply, ea, eb, self.splits, alphas=self.num_alphas, norm=norm,
            batch_size=self.batch_size,
        )  # fmt: skip
        alphas = c.pop("alphas")
        for m in ("loss", "error"):
            c[f"mean_{m}"] = [
                (a + b) / 2 for a, b in zip(c[f"code_{m}"], c[f"prose_{m}"], strict=True)
            ]
        keys = [f"{d}_{m}" for d in (*DOMAINS, "mean") for m in ("loss", "error")]
        return {"alphas": alphas, "curves": c, **barriers({"alphas": alphas, **c}, metrics=keys)}

    def end(self, entry: dict, i: int) -> dict:
        """The metrics at point i of a path (0: A, -1: B; the same evaluator)."""
        return domain_metrics({k: v[i] for k, v in entry["curves"].items()}, DOMAINS)

    def midpoint(self, entry: dict, ea: dict, eb: dict) -> dict:
        """(A + B) / 2: read off the path when it has alpha 0.5, else evaluated."""
        if 0.5 in entry["alphas"]:
            return self.end(entry, entry["alphas"].index(0.5))
        return self.metrics(
            {"params": _average(ea["params"], eb["params"]), "model_state": ea["model_state"]}
        )


@jax.jit
def _average(a, b):
    return jax.tree.map(lambda x, y: 0.5 * x + 0.5 * y, a, b)


def distance(ea: dict, eb: dict | None) -> float:
    """L2 distance between two networks' parameters (the norm of `ea` if `eb` is None):
    how far the children travelled, the scale against which barriers are measured."""
    a = jax.tree.leaves(ea["params"])
    b = jax.tree.leaves(eb["params"]) if eb is not None else [0.0] * len(a)
    return float(np.sqrt(sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))
                             for x, y in zip(a, b, strict=True))))  # fmt: skip


def task_arithmetic(theta_k: dict, ea: dict, eb: dict, s: float) -> dict:
    """theta_k + s * ((theta_A - theta_k) + (theta_B - theta_k))."""
    params = _task_arithmetic(theta_k["params"], ea["params"], eb["params"], s)
    return {"params": params, "model_state": ea["model_state"]}


@jax.jit
def _task_arithmetic(k, a, b, s):
    return jax.tree.map(lambda k, a, b: k + s * ((a - k) + (b - k)), k, a, b)


def independent(config, workdir, model, mixed, domain_data, children, child_seed, ev) -> dict:
    """Code child from init seed config.seed, prose child from init child_seeds[1]: no
    shared init, no shared training; the average after each alignment method."""
    init = training.parent_seeds(config).init
    s = child_seed[1]
    pair = [training.Child(1, workdir / "independent" / "prose", None, domain_data["prose"],
                           training.Seeds(s, s, s))]  # fmt: skip
    if 0 in children:  # exactly the k=0 code child: same init, same data seed
        ea = children[0]["code"]
    else:
        pair.insert(
            0,
            training.Child(
                0,
                workdir / "independent" / "code",
                None,
                domain_data["code"],
                training.Seeds(init, child_seed[0], child_seed[0]),
            ),
        )
    ends = training.train_children(config, workdir, model, mixed, pair)
    ea, eb = (ends[0], ends[1]) if len(ends) == 2 else (ea, ends[0])
    out = {"init_seeds": [init, s], "models": {}, "methods": {}}
    for method in config.eval.methods:
        base, norm = methods_lib.parse_method(method)
        aligned, info = methods_lib.align_endpoint(base, config, model, mixed, ea, eb)
        entry = ev.path(ea, aligned, methods_lib.eval_norm(config, norm))
        out["methods"][method] = {**entry, **info, "distance": distance(ea, aligned)}
        if method == "naive":
            out["models"]["code_child"] = ev.end(entry, 0)
            out["models"]["prose_child"] = ev.end(entry, -1)
            out["models"]["average"] = ev.midpoint(entry, ea, aligned)
        else:
            out["models"][f"average_{method}"] = ev.midpoint(entry, ea, aligned)
    return out


# ---- summaries ----------------------------------------------------------------------
def _rows(results: dict):
    """(setting, model, code loss, prose loss, mean loss, code err, prose err)."""

    def row(setting, name, m):
        return [
            setting,
            name,
            *(f"{m[d]['loss']:.3f}" for d in (*DOMAINS, "mean")),
            *(tables.value("error", m[d]["error"]) for d in DOMAINS),
        ]

    yield row(f"mixture, {results['total_steps']} steps", "mixture", results["mixture"])
    for point in results["spawn"]:
        setting = f"fork at k={point['spawn_step']}"
        for name, m in point["models"].items():
            yield row(setting, name, m)
    ind = results.get("independent")
    if ind:
        for name, m in ind["models"].items():
            yield row("independent inits", name, m)


def table(runs: list[tuple[str, dict]]) -> str:
    """Per-domain held-out loss (nats per byte) and error of every model of every run."""
    header = ["run", "setting", "model", "code loss", "prose loss", "mean loss", "code err",
              "prose err"]  # fmt: skip
    rows = [[run, *row] for run, results in runs for row in _rows(results)]
    return tables.markdown(header, rows)


def plot(results: dict, workdir: Path) -> list[Path]:
    path = lmc_io.path(workdir) / PLOT_FILE
    plot_results(results, path)
    return [path]


def plot_results(results: dict, path: str | Path) -> None:
    """Per-domain loss along theta_A (code child) -> theta_B (prose child), one line per
    fork step k (and the independent pair), from the results dict alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [(f"fork at k={p['spawn_step']}", p["curve"]) for p in results["spawn"]]
    ind = results.get("independent")
    if ind:
        for method, entry in ind["methods"].items():
            if "curves" in entry:
                lines.append((f"independent, {method.replace('_', ' ')}", entry))
    panels = [
        ("code", "held-out code"),
        ("prose", "held-out prose"),
        ("mean", "mean of both domains"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.9), sharey=False)
    cmap = plt.get_cmap("viridis")
    n_spawn = max(len(results["spawn"]), 1)
    for ax, (d, title) in zip(axes, panels, strict=True):
        for i, (label, entry) in enumerate(lines):
            if label.startswith("fork"):
                style = dict(color=cmap(i / max(n_spawn - 1, 1) * 0.85), lw=2)
            elif "naive" in label:
                style = dict(color="tab:red", lw=1.5, ls="--")
            else:  # one colour per alignment method of the independent pair
                aligned = i - n_spawn - 1
                style = dict(color=ALIGNED_COLORS[aligned % len(ALIGNED_COLORS)], lw=1.5, ls="-.")
            ax.plot(entry["alphas"], entry["curves"][f"{d}_loss"], label=label, **style)
        mix = results["mixture"][d]["loss"]
        ax.axhline(mix, color="gray", ls=":", lw=1.5, label="mixture model (same steps)")
        ax.set_title(title)
        ax.set_xlabel("alpha   (0 = code child, 1 = prose child)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out loss (nats per byte)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=9, frameon=False
    )
    fig.suptitle(
        "Interpolating a code-specialist and a prose-specialist byte LM "
        f"({results['total_steps']} steps each)"
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
