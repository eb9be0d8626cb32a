"""Alignment at the sizes people merge: time, peak memory and objective per method.

    python benchmarks/align_scale.py                         # transformer + MLP shapes
    python benchmarks/align_scale.py --quick                 # small shapes, seconds
    python benchmarks/align_scale.py --only gpt2_small --methods weight_matching
    python benchmarks/align_scale.py --previous=/path/to/old/checkout   # side by side
    python benchmarks/align_scale.py --restarts=1    # every method with one visiting order

Each (shape, method) runs in a fresh subprocess on two independently initialized
models (random init: the assignment problems are at their least structured), so the
peak memory is that method's alone: the process's peak RSS (VmHWM) is reset after
the two models are built and converted to host float32 arrays, and read after the
method returns. "peak/model" is that peak above the RSS just before the method ran,
in units of one model's float32 bytes (A and B themselves are already resident).

`--previous=DIR` runs the same cases with the `lmc` package found in DIR (e.g. a
`git worktree` of an older commit) in the same run, interleaved, and prints both;
methods the older code lacks as Python recipes go through its experiment engine's
functions when it has them.

Methods: `weight_matching` (plain permutations), `weight_matching_heads` (heads
as units with per-head query/key and value/output permutations),
`weight_matching_orthogonal` (the same matching alternated with Procrustes rounds of
the residual-stream rotation), `activation_matching` (transformers: 8 batches of
random tokens). The objective J = sum <W_a, T(W_b)> over the params is printed for
each, so a faster solve can be checked to reach the same optimum.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `--restarts N` reaches the worker through this variable (0 or unset: defaults).
RESTARTS_ENV = "LMC_ALIGN_SCALE_RESTARTS"

# name -> (kind, sizes). Transformers are lmc's byte-level LM (vocab 256), so the
# parameter count is the blocks' (GPT-2's 50k-token embedding would add 39M).
SHAPES = {
    "lm_d256_l4": ("transformer", dict(width=256, depth=4, heads=4)),
    "lm_d384_l6": ("transformer", dict(width=384, depth=6, heads=6)),
    "gpt2_small": ("transformer", dict(width=768, depth=12, heads=12)),
    "gpt2_medium": ("transformer", dict(width=1024, depth=24, heads=16)),
    "mlp_3x1024": ("mlp", dict(width=1024, depth=3)),
    "mlp_3x4096": ("mlp", dict(width=4096, depth=3)),
    "mlp_3x8192": ("mlp", dict(width=8192, depth=3)),
    "mlp_3x16384": ("mlp", dict(width=16384, depth=3)),
    # Imported-checkpoint architectures (lmc.models.hub, random init): the config.json
    # of Pythia-70m / -160m (GPT-NeoX: parallel residual, rotary on a quarter of each
    # head, untied 50304-token embeddings) and of a small grouped-query Llama.
    "pythia_70m": (
        "hub",
        dict(
            model_type="gpt_neox",
            vocab_size=50304,
            hidden_size=512,
            num_hidden_layers=6,
            num_attention_heads=8,
            intermediate_size=2048,
            rotary_pct=0.25,
            max_position_embeddings=2048,
            use_parallel_residual=True,
        ),
    ),
    "pythia_160m": (
        "hub",
        dict(
            model_type="gpt_neox",
            vocab_size=50304,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            rotary_pct=0.25,
            max_position_embeddings=2048,
            use_parallel_residual=True,
        ),
    ),
    "llama_d512_gqa": (
        "hub",
        dict(
            model_type="llama",
            vocab_size=32000,
            hidden_size=512,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            intermediate_size=1408,
        ),
    ),
}
QUICK = ("lm_d256_l4", "mlp_3x1024")
DEFAULT = ("lm_d384_l6", "gpt2_small", "mlp_3x1024", "mlp_3x4096")
TRANSFORMER_METHODS = (
    "weight_matching",
    "weight_matching_heads",
    "weight_matching_orthogonal",
    "activation_matching",
)
MLP_METHODS = ("weight_matching", "activation_matching")


# ---- the worker: one (shape, method) in this process ------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux)
    except OSError:
        pass


def _build(shape: str):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lmc import models

    kind, kw = SHAPES[shape]
    if kind == "transformer":
        model = models.build("transformer", 256, context=64, **kw)
        x = jnp.zeros((2, 64), jnp.int32)
    elif kind == "hub":
        from lmc.models import hub

        model = hub.init(kw, seed=0).model
        x = jnp.zeros((2, 64), jnp.int32)
    else:
        model = models.build("mlp", 10, **kw)
        x = jnp.zeros((2, 28, 28, 1))
    init = jax.jit(model.init)
    trees = []
    for seed in (1, 2):
        params, state = init(jax.random.key(seed), x)
        trees.append(
            {
                "params": jax.tree.map(lambda a: np.array(a, np.float32), params),
                "model_state": jax.tree.map(np.asarray, state),
            }
        )
        del params, state
    return kind, model, x, trees


def _objective(params_a, params_b) -> float:
    import jax
    import numpy as np

    pairs = zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True)
    return float(sum(np.vdot(np.float64(a), np.float64(b)) for a, b in pairs))


def _run_method(method: str, kind: str, model, x, ea, eb):
    """B aligned to A by `method` through whatever API this checkout has."""
    import jax
    import numpy as np

    from lmc import align

    key = jax.random.key(0)
    restarts = int(os.environ.get(RESTARTS_ENV, "0"))  # 0: each method's default
    spec = align.spec_from_model(model, x)
    if method == "weight_matching":
        perms, info = align.weight_matching(
            spec, ea["params"], eb["params"], key=key, restarts=max(restarts, 1)
        )
        return align.apply_permutation(spec, perms, eb)["params"], {"sweeps": info["sweeps"]}
    if method == "activation_matching":
        rng = np.random.default_rng(0)
        if kind in ("transformer", "hub"):
            batches = [rng.integers(0, 256, (16, 64)).astype(np.int32) for _ in range(8)]
        else:
            batches = [rng.normal(size=(256, 28, 28, 1)).astype(np.float32) for _ in range(8)]
        perms, _ = align.activation_matching(spec, model, ea, eb, batches)
        return align.apply_permutation(spec, perms, eb)["params"], {}
    if hasattr(align, method):  # the public recipes
        kwargs = {"restarts": restarts} if restarts else {}
        out, info = getattr(align, method)(model, ea, eb, x, key=key, **kwargs)
        return out["params"], {k: v for k, v in info.items() if isinstance(v, (int, float))}
    # Older checkouts: the experiment engine's functions.
    import ml_collections

    from lmc.experiments import methods

    config = ml_collections.ConfigDict(
        {"align": {"max_iter": 100, "seed": 0}, "model": {"name": "transformer"}}
    )
    dataset = type("D", (), {"train_x": np.asarray(x)})()
    if method == "weight_matching_heads":
        nspec, perms, extra = methods.heads_matching(config, model, dataset, spec, ea, eb, key)
        return align.apply_permutation(nspec, perms, eb)["params"], {"sweeps": extra["sweeps"]}
    out, extra = methods.orthogonal_matching(
        config, model, dataset, spec, ea, eb, key, time.perf_counter()
    )[:2]
    return out["params"], {"sweeps": extra["sweeps"]}


def worker(shape: str, method: str) -> dict:
    import jax
    import numpy as np

    kind, model, x, (ea, eb) = _build(shape)
    model_bytes = sum(np.asarray(v).nbytes for v in jax.tree.leaves(ea["params"]))
    n_params = sum(np.size(v) for v in jax.tree.leaves(ea["params"]))
    # The runtime's baseline: the models are resident; warm the tracer on a tiny model
    # of the same kind so the measured peak is the method's, not first-import costs.
    import gc

    gc.collect()
    before = _rss_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    aligned, info = _run_method(method, kind, model, x, ea, eb)
    wall = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    return {
        "shape": shape,
        "method": method,
        "params_m": round(n_params / 1e6, 1),
        "wall_s": round(wall, 2),
        "peak_over_model": round((peak - before) * 1024 / model_bytes, 2),
        "peak_gib": round(peak / 2**20, 2),
        "objective": _objective(ea["params"], aligned),
        "restarts": int(os.environ.get(RESTARTS_ENV, "0")) or "default",
        "naive_objective": _objective(ea["params"], eb["params"]),
        **{k: v for k, v in info.items() if k in ("sweeps",)},
    }


# ---- the driver --------------------------------------------------------------------------
def run_case(shape: str, method: str, code: Path, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{code}:{ROOT}", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", shape, method]
    try:
        out = subprocess.run(
            cmd, env=env, cwd=code, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"shape": shape, "method": method, "error": f"not finished in {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return {"shape": shape, "method": method, "error": tail[0][:200]}
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    head = (
        "| shape | params (M) | method | restarts | code | time (s) | peak / model | J | sweeps |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | | {r['method']} | | {r['code']} | {r['error']} | | | |")
            continue
        lines.append(
            f"| {r['shape']} | {r['params_m']} | {r['method']} | {r.get('restarts', '')} | "
            f"{r['code']} | {r['wall_s']} | "
            f"{r['peak_over_model']} | {r['objective']:.6g} | {r.get('sweeps', '')} |"
        )
    return "\n".join(lines)


def run(quick: bool, only=None, methods=None, previous=None, timeout=1800.0) -> list[dict]:
    shapes = only or (QUICK if quick else DEFAULT)
    codes = [("new", ROOT)] + ([("previous", Path(previous).resolve())] if previous else [])
    rows = []
    for shape in shapes:
        kind = SHAPES[shape][0]
        lm = kind in ("transformer", "hub")
        for method in methods or (TRANSFORMER_METHODS if lm else MLP_METHODS):
            for label, code in codes:
                row = run_case(shape, method, code, timeout)
                row["code"] = label
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help=f"comma-separated shapes of {sorted(SHAPES)}")
    parser.add_argument("--methods", help="comma-separated methods")
    parser.add_argument("--previous", help="a checkout of older lmc code to run beside")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument(
        "--restarts",
        type=int,
        default=0,
        help="visiting orders for every method (weight matching and the recipes); "
        "default: each method's own (plain 1, recipes 4)",
    )
    args = parser.parse_args()
    if args.restarts:
        os.environ[RESTARTS_ENV] = str(args.restarts)
    split = lambda s: tuple(s.split(",")) if s else None  # noqa: E731
    rows = run(args.quick, split(args.only), split(args.methods), args.previous, args.timeout)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
