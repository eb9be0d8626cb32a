"""Benchmark suite: lmc versus side-by-side baselines, one JSON line per result.

    python benchmarks/run.py [--quick] [--only NAME[,NAME...]]

Each line is {"name", "ours_s", "baseline_s", "ratio", "detail"} with
ratio = baseline_s / ours_s (> 1: lmc is faster), every pair timed in the same run
on the same machine after a warmup, as the median of interleaved repeats (a, b, b, a,
...). Headroom measurements (input pipeline: loader rate / step rate) carry
"headroom" instead of a ratio and get their own table: they are not speed-ups. A
Markdown table follows. `--quick`: small sizes, the CI smoke test. On a GPU/TPU host the same suite runs on the accelerator JAX finds.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

BENCHMARKS = {
    "weight_matching": "benchmarks.bench_weight_matching",
    "curve_eval": "benchmarks.bench_curve_eval",
    "train_step": "benchmarks.bench_train_step",
    "population": "benchmarks.bench_population",
    "input_pipeline": "benchmarks.bench_input_pipeline",
    "conv_grad": "benchmarks.bench_conv_grad",
    "align_scale": "benchmarks.bench_align_scale",
}


def machine() -> str:
    d = jax.devices()[0]
    return (
        f"{platform.processor() or platform.machine()}, {len(jax.devices())} x {d.device_kind} "
        f"({jax.default_backend()}), jax {jax.__version__}"
    )


def markdown(rows: list[dict]) -> str:
    """Speed comparisons (ratio = baseline / ours), then headroom rows in their own
    table: a headroom is how much faster a producer is than its consumer, not a
    speed-up of lmc over a baseline."""
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    speed = [r for r in rows if "headroom" not in r]
    headroom = [r for r in rows if "headroom" in r]
    lines = ["| benchmark | ours (s) | baseline (s) | ratio | detail |", "|---|---|---|---|---|"]
    for r in speed:
        lines.append(
            f"| {r['name']} | {fmt(r['ours_s'])} | {fmt(r['baseline_s'])} | "
            f"{fmt(r['ratio'])} | {r['detail']} |"
        )
    if headroom:
        lines += [
            "",
            "| headroom (not a speed-up) | supply (s/batch) | demand (s/batch) | headroom | detail |",
            "|---|---|---|---|---|",
        ]
        for r in headroom:
            lines.append(
                f"| {r['name']} | {fmt(r['ours_s'])} | {fmt(r['baseline_s'])} | "
                f"{fmt(r['headroom'])}x | {r['detail']} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {list(BENCHMARKS)}")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; valid: {', '.join(BENCHMARKS)}")
    print(json.dumps({"machine": machine(), "quick": args.quick}), flush=True)
    rows, failed = [], 0
    t0 = time.perf_counter()
    for name in names:
        try:
            for r in importlib.import_module(BENCHMARKS[name]).run(args.quick):
                print(json.dumps(r), flush=True)
                rows.append(r)
        except Exception as e:  # report and go on: one broken benchmark hides no others
            failed += 1
            traceback.print_exc()
            r = {
                "name": name,
                "ours_s": None,
                "baseline_s": None,
                "ratio": None,
                "detail": f"FAILED: {type(e).__name__}: {e}",
            }
            print(json.dumps(r), flush=True)
            rows.append(r)
    print()
    print(markdown(rows))
    print(f"\nmachine: {machine()}; total {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
