"""Markdown tables that the experiments' `table()` functions share.

Errors are shown in percent (how papers report them); results.json keeps fractions.
"""

from __future__ import annotations

COLUMNS = ("test_loss", "test_error", "train_loss", "train_error")
HEADER = ["run", "method", *(f"barrier {c}" for c in COLUMNS)]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: (
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
    )
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), sep, *(fmt(r) for r in rows)])


def value(metric: str, v) -> str:
    """A loss in nats, an error in percent points."""
    if v is None:
        return ""
    return f"{100 * v:.2f}%" if metric.endswith("error") else f"{v:.4f}"


def mean_std(metric: str, mean: dict, std: dict, n: int) -> str:
    if metric not in mean:
        return ""
    if n < 2:  # one pair has no spread to report
        return value(metric, mean[metric])
    return f"{value(metric, mean[metric])} ± {value(metric, std.get(metric, 0.0))}"


def label(method: str, entry: dict) -> str:
    """The method's name; a midpoint of another shape than the endpoints (the circuit
    merge) says so and how much larger it is, so no reader ranks it among the others."""
    if entry.get("same_shape", True):
        return method
    ratio = entry["midpoint_params"] / entry["endpoint_params"]
    return f"{method} [not same-shape: midpoint {ratio:.2f}x params]"


def same_shape_first(methods: dict) -> list[tuple[str, dict]]:
    """(method, entry) pairs, the same-shape methods first: the others come apart."""
    key = lambda item: not item[1].get("same_shape", True)
    return sorted(methods.items(), key=key)  # stable: config order within each group


def method_rows(run: str, methods: dict) -> list[list[str]]:
    """One row per method of a `methods` dict (pair-shaped results)."""
    rows = []
    for method, entry in same_shape_first(methods):
        if "error" in entry:
            rows.append([run, method, "failed: " + entry["error"][:60], "", "", ""])
            continue
        barrier = entry.get("barrier", {})
        rows.append([run, label(method, entry), *(value(c, barrier.get(c)) for c in COLUMNS)])
    return rows


# Language-model endpoints: results.json has these for text data (lmc.evaluate.metrics).
LM_COLUMNS = ("test_loss", "test_perplexity", "test_bits_per_byte", "test_error")
LM_HEADER = ["run", "endpoint", "test loss (nats)", "test perplexity", "test bits/byte",
             "test error"]  # fmt: skip


def lm_endpoint_rows(run: str, endpoints: dict) -> list[list[str]]:
    """One row per endpoint that has language-model metrics (none for image data)."""
    rows = []
    for name, metrics in endpoints.items():
        if "test_perplexity" in metrics:
            cells = [
                f"{metrics[c]:.4f}" if c != "test_error" else value(c, metrics[c])
                for c in LM_COLUMNS
            ]
            rows.append([run, name, *cells])
    return rows


def point_rows(run: str, results: dict) -> list[list[str]]:
    """One row per (point, method) of sweep-shaped results (`points`, `sweep_key`)."""
    key = results["sweep_key"]
    rows = []
    for point in sorted(results["points"], key=lambda p: p[key]):
        for method, stats in same_shape_first(point["methods"]):
            run_label = f"{run} [{key}={point[key]:g}]"
            if "error" in stats:
                rows.append([run_label, method, "failed: " + stats["error"][:60], "", "", ""])
                continue
            n = int(stats.get("num_pairs", 1))
            cells = [mean_std(c, stats["barrier_mean"], stats["barrier_std"], n) for c in COLUMNS]
            name = f"{label(method, stats)} ({n} pair{'s' if n != 1 else ''})"
            rows.append([run_label, name, *cells])
    return rows
