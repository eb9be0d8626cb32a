"""PNG plots drawn from a results.json-shaped dict alone.

    plot_curves(results, "curves.png")                 # loss/error vs alpha per method
    plot_sweep(results, "barrier_vs_k.png", "spawn_step")  # barrier mean ± std vs swept value

Only the dict is read (no model, no data), so any results.json, old or copied from
a cluster, can be re-plotted. Figures are built on `matplotlib.figure.Figure`
(the Agg canvas, no pyplot global state: safe in threads and on headless
machines), drawn into memory and written atomically through `lmc.runtime.io` (temp file
and rename locally, one object upload on gs://), so a reader never sees half a PNG.
"""

from __future__ import annotations

import io as stdio
import math
import os
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from lmc.runtime import io

METRICS = ("train_loss", "train_error", "test_loss", "test_error")
_GRID = (("train_loss", "train_error"), ("test_loss", "test_error"))  # rows x cols
_LABELS = {
    "train_loss": "train loss (nats)",
    "train_error": "train error (%)",
    "test_loss": "test loss (nats)",
    "test_error": "test error (%)",
}
_DPI = 120


def plot_curves(results: dict, path):
    """2x2 figure (train/test x loss/error vs alpha), one line per method.

    The legend gives each method's barriers (loss / error, train and test), as
    Entezari et al.'s max deviation from the chord. Methods recorded as failed
    (an "error" entry) are listed in the title's footnote instead of drawn.
    """
    methods = results.get("methods") or {}
    drawn = {name: m for name, m in methods.items() if "curves" in m and "alphas" in m}
    failed = sorted(name for name in methods if name not in drawn)
    if not drawn:
        raise ValueError("results has no method with curves to plot")
    fig = Figure(figsize=(11, 8.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    colors = _colors(list(drawn))
    for row, metrics in enumerate(_GRID):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            for name, entry in drawn.items():
                if metric in entry["curves"]:
                    ax.plot(entry["alphas"], entry["curves"][metric], marker="o", markersize=3,
                            linewidth=1.6, color=colors[name], label=name)  # fmt: skip
            ax.set_title(_label(results, metric))
            if row == 1:
                ax.set_xlabel("alpha  (0 = network A, 1 = network B)")
            _style_metric_axis(ax, metric)
            ax.set_xlim(0, 1)
    labels = {name: f"{name}   barrier: {_barrier_summary(drawn[name])}" for name in drawn}
    _legend(fig, colors, labels, ncols=2)
    title = _title(results, "interpolation curves")
    if failed:
        title += "\nfailed, not drawn: " + ", ".join(failed)
    fig.suptitle(title, fontsize=13)
    return _save(fig, path)


def _barrier_summary(entry: dict) -> str:
    barrier = entry.get("barrier") or {}
    parts = []
    for split in ("train", "test"):
        loss, error = barrier.get(f"{split}_loss"), barrier.get(f"{split}_error")
        if loss is not None and error is not None:
            parts.append(f"{split} {_fmt('loss', loss)} / {_fmt('error', error)}")
    return ", ".join(parts) if parts else "n/a"


def plot_sweep(results: dict, path, x_key: str, kind: str = "barrier", notes=None):
    """Barrier mean ± std (over pairs) versus the swept value, one line per method, with
    each pair's barrier as a dot. `results["onset"]` (instability's k* per method) is
    drawn as a dotted vertical line per method and its threshold as a dotted horizontal
    line; `notes` ({method: text}) is added to the legend (e.g. the k* values).

    Reads `results["points"]`: entries `{x_key: value, "methods": {name:
    {"<kind>_mean": {metric: v}, "<kind>_std": {metric: v}, ...}}}` as written by
    the sweep experiments; `kind` is "barrier" or "barrier_vs_mean". The band is
    ± one standard deviation; a method failed at a point leaves a gap there.
    """
    points = [p for p in results.get("points") or [] if x_key in p]
    if not points:
        raise ValueError(f"results has no points with key {x_key!r}")
    points.sort(key=lambda p: p[x_key])
    names = []
    for p in points:
        names += [n for n in p.get("methods", {}) if n not in names]
    colors = _colors(names)
    xs = [float(p[x_key]) for p in points]
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    for row, metrics in enumerate(_GRID):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            for name in names:
                mean, std = [], []
                for p in points:
                    entry = p.get("methods", {}).get(name, {})
                    m = (entry.get(f"{kind}_mean") or {}).get(metric)
                    s = (entry.get(f"{kind}_std") or {}).get(metric, 0.0)
                    mean.append(math.nan if m is None else float(m))
                    std.append(float(s))
                if all(math.isnan(m) for m in mean):
                    continue
                low = [m - s for m, s in zip(mean, std, strict=True)]
                high = [m + s for m, s in zip(mean, std, strict=True)]
                ax.plot(xs, mean, marker="o", markersize=4, linewidth=1.6,
                        color=colors[name], label=name)  # fmt: skip
                ax.fill_between(xs, low, high, color=colors[name], alpha=0.18, linewidth=0)
                _pair_dots(ax, points, x_key, name, kind, metric, colors[name])
            ax.axhline(0.0, color="gray", linewidth=0.8, linestyle="--")
            _onset_marks(ax, results.get("onset") if kind == "barrier" else None, metric, colors)
            ax.set_title(f"{kind.replace('_', ' ')}: {_label(results, metric)}")
            if row == 1:
                ax.set_xlabel(_x_label(x_key))
            _style_metric_axis(ax, metric)
            _scale_x(ax, xs)
    notes = notes or {}
    labels = {n: f"{n}   {notes[n]}" if n in notes else n for n in names}
    _legend(fig, colors, labels, ncols=2 if notes else 4)
    num_pairs = {e.get("num_pairs") for p in points for e in p.get("methods", {}).values()}
    num_pairs.discard(None)
    counts = "/".join(map(str, sorted(num_pairs)))
    subtitle = (
        f"mean ± std over {counts} pair{'' if num_pairs == {1} else 's'}" if num_pairs else ""
    )
    fig.suptitle(_title(results, f"{kind.replace('_', ' ')} vs {x_key}  {subtitle}"), fontsize=13)
    return _save(fig, path)


def _pair_dots(ax, points, x_key, name, kind, metric, color) -> None:
    """Each pair's own barrier as a dot: the spread the mean ± std band summarizes."""
    xs, ys = [], []
    for p in points:
        for pair in p.get("pairs") or []:
            v = (pair.get(name, {}).get(kind) or {}).get(metric)
            if v is not None:
                xs.append(float(p[x_key]))
                ys.append(float(v))
    ax.scatter(xs, ys, s=9, color=color, alpha=0.55, linewidths=0)


def _onset_marks(ax, onsets: dict | None, metric: str, colors: dict) -> None:
    """k* of each method as a vertical line, and the stability threshold on its metric."""
    for name, entry in (onsets or {}).items():
        if entry.get("spawn_step") is not None and name in colors:
            ax.axvline(entry["spawn_step"], color=colors[name], linewidth=1.2, linestyle=":")
            ax.text(entry["spawn_step"], 0.97, " k*", transform=ax.get_xaxis_transform(),
                    color=colors[name], va="top", fontsize=9)  # fmt: skip
        if metric == entry.get("metric"):
            ax.axhline(entry["threshold"], color="black", linewidth=0.8, linestyle=":")


def plot_merge(results: dict, path):
    """merge_many: test loss and error of every model, their plain average and the
    MergeMany merge, as bars (the merge should sit near the models, the naive average
    far above them)."""
    networks = [(f"model {i}", m) for i, m in enumerate(results["models"])]
    networks += [("naive average", results["naive_average"]), ("MergeMany", results["merged"])]
    names = [n for n, _ in networks]
    colors = ["C7"] * len(results["models"]) + ["C3", "C0"]
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("test_loss", "test_error"), strict=True):
        values = [m[metric] for _, m in networks]
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), names, rotation=20, ha="right")
        ax.set_title(_label(results, metric))
        for i, v in enumerate(values):
            ax.annotate(_fmt(metric, v), (i, v), ha="center", va="bottom", fontsize=8)
        _style_metric_axis(ax, metric)
    fig.suptitle(_title(results, "merged models"), fontsize=13)
    return _save(fig, path)


def _label(results: dict, metric: str) -> str:
    """Panel title; losses of byte-level language models are per byte."""
    data = str(((results.get("config") or {}).get("data") or {}).get("name", ""))
    if data.startswith("text:") and metric.endswith("loss"):
        return _LABELS[metric].replace("(nats)", "(nats per byte)")
    return _LABELS[metric]


def _legend(fig: Figure, colors: dict, labels: dict, ncols: int) -> None:
    """One legend below all panels (a legend inside a panel always hides some curve)."""
    handles = [Line2D([], [], color=colors[n], marker="o", markersize=4) for n in labels]
    fig.legend(handles, list(labels.values()), loc="outside lower center",
               ncols=max(1, min(ncols, len(labels))), fontsize=9)  # fmt: skip


def _title(results: dict, what: str) -> str:
    config = results.get("config") or {}
    model, data = config.get("model") or {}, config.get("data") or {}
    parts = [str(results.get("experiment", "experiment"))]
    if model.get("name"):
        width = f" width {model['width']}" if model.get("width") not in (None, "") else ""
        norm = f" {model['norm']}" if model.get("norm") not in (None, "", "none") else ""
        parts.append(f"{model['name']}{width}{norm}")
    if data.get("name"):
        parts.append(f"on {data['name']}")
    return " ".join(parts) + f" - {what}"


def _fmt(metric: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{100 * value:.1f}%" if metric.endswith("error") else f"{value:.3f}"


def _style_metric_axis(ax, metric: str) -> None:
    ax.grid(True, alpha=0.3)
    if metric.endswith("error"):
        # Errors are fractions in results.json; percent is how papers report them.
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))


def _scale_x(ax, xs: list[float]) -> None:
    """Log-like x for values spanning decades (spawn steps 0, 100, ..., 10000)."""
    positive = [x for x in xs if x > 0]
    if len(positive) < 2 or max(positive) / min(positive) < 20:
        return
    if min(xs) > 0:
        ax.set_xscale("log")
    elif min(xs) == 0:
        ax.set_xscale("symlog", linthresh=min(positive))


def _x_label(x_key: str) -> str:
    return {"spawn_step": "spawn step k", "width": "width multiplier"}.get(
        x_key, x_key.replace("_", " ")
    )


def _colors(names: list[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _save(fig: Figure, path):
    path = io.path(path)
    buf = stdio.BytesIO()
    fig.savefig(buf, format=os.path.splitext(path.name)[1].lstrip(".") or "png", dpi=_DPI)
    io.write_bytes_atomic(path, buf.getvalue(), any_process=True)
    return path if io.is_remote(path) else Path(path)
