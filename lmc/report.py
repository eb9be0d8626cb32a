"""`lmc report DIR...`: barrier tables from results.json files.

A DIR may be a run's workdir (holding results.json) or a sweep directory (whose
sub-directories hold them); several DIRs are compared in one table.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmc.errors import UserError

COLUMNS = ("test_loss", "test_error", "train_loss", "train_error")


def find_results(directory: str | Path) -> list[tuple[str, dict]]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"lmc report: {directory} is not a directory")
    direct = directory / "results.json"
    paths = [direct] if direct.exists() else sorted(directory.glob("*/results.json"))
    found = []
    for path in paths:
        try:
            found.append((str(path.parent), json.loads(path.read_text())))
        except ValueError as e:
            raise UserError(f"lmc report: {path} is not valid JSON ({e})") from None
    return found


def _rows(run: str, results: dict):
    if "points" in results:
        key = results.get("sweep_key", "value")
        for point in results["points"]:
            for method, stats in point.get("methods", {}).items():
                cells = [
                    _mean_std(stats.get("barrier_mean", {}), stats.get("barrier_std", {}), c)
                    for c in COLUMNS
                ]
                yield [f"{run} [{key}={point[key]}]", method, *cells, ""]
        return
    for method, entry in results.get("methods", {}).items():
        if "error" in entry:
            yield [run, method, "failed: " + entry["error"][:60], "", "", "", ""]
            continue
        barrier = entry.get("barrier", {})
        cells = [f"{barrier[c]:.4f}" if c in barrier else "" for c in COLUMNS]
        align = f"{entry['align_s']:.2f}" if "align_s" in entry else ""
        yield [run, method, *cells, align]


def _mean_std(mean: dict, std: dict, col: str) -> str:
    if col not in mean:
        return ""
    return f"{mean[col]:.4f}±{std.get(col, 0.0):.4f}"


def format_merge_table(runs: list[tuple[str, dict]]) -> str:
    """merge_many runs: metrics (not barriers) of each model, the naive and the merged average."""
    header = ["run", "network", *COLUMNS]
    rows = []
    for run, results in runs:
        named = [(f"model {i}", m) for i, m in enumerate(results["models"])]
        named += [("naive average", results["naive_average"]), ("MergeMany", results["merged"])]
        rows += [[run, name, *(f"{m[c]:.4f}" for c in COLUMNS)] for name, m in named]
    return _table(header, rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: (
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
    )
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), sep, *(fmt(r) for r in rows)])


def format_table(runs: list[tuple[str, dict]]) -> str:
    merges = [(run, r) for run, r in runs if "merged" in r]
    runs = [(run, r) for run, r in runs if "merged" not in r]
    parts = [format_merge_table(merges)] if merges else []
    if runs or not merges:
        parts.insert(0, _barrier_table(runs))
    return "\n\n".join(parts)


def _barrier_table(runs: list[tuple[str, dict]]) -> str:
    header = ["run", "method", *(f"barrier {c}" for c in COLUMNS), "align s"]
    rows = [row for run, results in runs for row in _rows(run, results)]
    if not rows:
        return "no barriers found"
    return _table(header, rows)


def report_dirs(dirs: list[str]) -> str:
    extra = []
    for d in dirs:
        # Experiments with their own table shape (lm_code_vs_prose) write table.md.
        table = Path(d) / "table.md"
        if table.exists():
            extra.append(f"{d}:\n{table.read_text().strip()}")
    runs = []
    for d in dirs:
        found = find_results(d)
        if not found:
            raise UserError(
                f"lmc report: no results.json in {d} or its sub-directories (is the run finished?)"
            )
        runs.extend(found)
    tabled = [(run, r) for run, r in runs if "methods" in r or "points" in r or "merged" in r]
    return "\n\n".join(([format_table(tabled)] if tabled or not extra else []) + extra)
