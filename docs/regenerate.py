"""Regenerate the README's default-run numbers and figure from a fresh run: one command.

    python docs/regenerate.py            # runs `lmc run` (configs/default.py), ~20-40 s

Writes docs/default_curves.png (the run's curves.png), docs/default_run.json (the
numbers, the machine, the wall time) and rewrites the README block between
`<!-- default-run:begin -->` and `<!-- default-run:end -->` from that JSON, so prose
and figure cannot drift from the code: tests/test_readme_numbers.py reruns the default
config and fails when the stated numbers differ from a fresh run.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NUMBERS = ROOT / "docs" / "default_run.json"
BEGIN, END = "<!-- default-run:begin -->", "<!-- default-run:end -->"


def numbers_from(results: dict, wall_s: float) -> dict:
    """What the README states, from a default run's results.json."""
    methods = results["methods"]
    return {
        "test_accuracy": [1 - results["endpoints"][e]["test_error"] for e in ("a", "b")],
        "barrier_test_loss": {m: methods[m]["barrier"]["test_loss"] for m in methods},
        "barrier_test_error": {m: methods[m]["barrier"]["test_error"] for m in methods},
        "align_s": methods["weight_matching"].get("align_s"),
        "wall_s": round(wall_s, 1),
        "machine": f"{platform.machine()}, {_cores()} CPU cores, {results['provenance']['devices']}",
        "git_commit": results["provenance"]["git_commit"],
    }


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def block(n: dict) -> str:
    """The README paragraph, every number from `n`."""
    acc = " and ".join(f"{100 * a:.1f}%" for a in n["test_accuracy"])
    naive, wm = n["barrier_test_loss"]["naive"], n["barrier_test_loss"]["weight_matching"]
    e_naive = 100 * n["barrier_test_error"]["naive"]
    e_wm = 100 * n["barrier_test_error"]["weight_matching"]
    return (
        f"`lmc run` ({n['wall_s']:.0f} s of training and evaluation on {n['machine']}) trains\n"
        f"two 3x512 MLPs on digits from different inits with SGD+momentum; they reach {acc}\n"
        f"test accuracy. Naive interpolation: test-loss barrier {naive:.3f} nats, test error\n"
        f"+{e_naive:.1f} points. After weight matching ({n['align_s']:.1f} s): {wm:.3f} nats\n"
        f"({100 * wm / naive:.0f}% of the naive barrier) and +{e_wm:.1f} points. These numbers\n"
        f"and the figure below come from `python docs/regenerate.py` (docs/default_run.json);\n"
        "`tests/test_readme_numbers.py` fails when a fresh run disagrees."
    )


def write_readme(n: dict) -> None:
    text = README.read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + block(n) + "\n" + text[stop:])


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "default"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lmc.cli", "run", f"--workdir={workdir}"],
                       cwd=ROOT, check=True)  # fmt: skip
        wall = time.perf_counter() - t0
        results = json.loads((workdir / "results.json").read_text())
        n = numbers_from(results, wall)
        shutil.copy(workdir / "curves.png", ROOT / "docs" / "default_curves.png")
    NUMBERS.write_text(json.dumps(n, indent=1) + "\n")
    write_readme(n)
    print(f"wrote {NUMBERS}, docs/default_curves.png and the README block")
    return 0


if __name__ == "__main__":
    sys.exit(main())
