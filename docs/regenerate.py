"""Regenerate the numbers and figures of the README and docs/results/: one command.

    python docs/regenerate.py            # the default run (configs/default.py), ~15-40 s
    python docs/regenerate.py --all      # also docs/onset_* and docs/lm_*.png (about 2 hours on 2 cores)

`--all` adds the instability-onset sweep of configs/instability_cnn_fashion_mnist.py
(-> docs/onset_fashion_mnist.png and .json), configs/lm_code_vs_prose.py (-> docs/lm_code_vs_prose.png) and the 3
lm_rebasin pairs of benchmarks/lm_rebasin_pairs.py (-> docs/lm_rebasin_loss.png,
docs/lm_rebasin_curves.png, and learned matching at steps 400/800/1200 ->
docs/lm_rebasin_length.png); their tables in docs/results/ are then updated by hand from
the printed numbers.

Writes docs/default_curves.png (the run's curves.png), docs/default_run.json (the
numbers, the machine, the wall time) and rewrites the README block between
`<!-- default-run:begin -->` and `<!-- default-run:end -->` from that JSON, so prose
and figure cannot drift from the code: tests/e2e/test_readme_numbers.py reruns the default
config and fails when the stated numbers differ from a fresh run.
"""

from __future__ import annotations

import json
import os
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
        "`tests/e2e/test_readme_numbers.py` fails when a fresh run disagrees."
    )


def write_readme(n: dict) -> None:
    text = README.read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + block(n) + "\n" + text[stop:])


def regenerate_language_models(tmp: Path) -> None:
    """The language-model figures (docs/results/lm_merging.md), from fresh runs."""
    cvp = tmp / "lm_code_vs_prose"
    subprocess.run([sys.executable, "-m", "lmc.cli", "run", "--config=configs/lm_code_vs_prose.py",
                    f"--workdir={cvp}"], cwd=ROOT, check=True)  # fmt: skip
    shutil.copy(cvp / "code_vs_prose.png", ROOT / "docs" / "lm_code_vs_prose.png")
    pairs = [sys.executable, "benchmarks/lm_rebasin_pairs.py", f"--workdir={tmp / 'pairs'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Checkpoints every 400 steps, all kept: the training-length trend below reads them.
    keep = ["--set", "checkpoint.every_steps=400", "--set", "checkpoint.max_to_keep=5"]
    subprocess.run([*pairs, "--pairs=3", *keep], cwd=ROOT, env=env, check=True)
    subprocess.run([*pairs, f"--plot={ROOT / 'docs' / 'lm_rebasin'}"], cwd=ROOT, env=env,
                   check=True)  # fmt: skip
    # The training-length trend of learned matching: the same pairs' earlier checkpoints.
    trend = []
    for step in (400, 800, 1200):
        subprocess.run([*pairs, "--pairs=3", f"--at_step={step}", f"--out=at_{step}.json",
                        "--methods=naive,learned_matching"], cwd=ROOT, env=env, check=True)  # fmt: skip
        trend.append(f"at_{step}.json")
    subprocess.run([*pairs, f"--out={','.join([*trend, 'pairs.json'])}",
                    f"--trend={ROOT / 'docs' / 'lm_rebasin_length.png'}"], cwd=ROOT, env=env,
                   check=True)  # fmt: skip


def regenerate_onset(tmp: Path) -> None:
    """The instability-onset figure (docs/onset_fashion_mnist.png) and results.json
    (docs/onset_fashion_mnist.json, the table of docs/results/instability_onset.md) from a
    fresh sweep."""
    sweep = tmp / "onset_fmnist"
    subprocess.run([sys.executable, "-m", "lmc.cli", "sweep",
                    "--config=configs/instability_cnn_fashion_mnist.py", f"--workdir={sweep}",
                    "--parallel=2"], cwd=ROOT, check=True)  # fmt: skip
    shutil.copy(sweep / "barrier_vs_k.png", ROOT / "docs" / "onset_fashion_mnist.png")
    shutil.copy(sweep / "results.json", ROOT / "docs" / "onset_fashion_mnist.json")


def main() -> int:
    every = "--all" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        if every:
            regenerate_onset(Path(tmp))
            regenerate_language_models(Path(tmp))
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
