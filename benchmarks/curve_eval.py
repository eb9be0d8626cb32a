"""Cost of a 25-alpha interpolation curve versus 25 plain forward passes.

    python benchmarks/curve_eval.py [--n 10000] [--alphas 25] [--repeats 3] [--alpha-chunk 1]

Times `lmc.evaluate.interpolation_curve` (norm="none") for a 3x512 MLP on N random
28x28 images (half as the train split, half as test) against `alphas` jitted
forward passes of one network over the same device-resident batches, each after a
warmup, median of `repeats` (interleaved), and prints the ratio. The design target is <= 1.3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import median_times  # noqa: E402
from lmc import evaluate, models  # noqa: E402


def run(n=10_000, num_alphas=25, repeats=3, batch_size=1000, alpha_chunk=1, width=512, depth=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    half = n // 2
    data = {"train": (x[:half], y[:half]), "test": (x[half:], y[half:])}
    model = models.build("mlp", 10, width=width, depth=depth)
    pa, sa = model.init(jax.random.key(0), x[:1])
    pb, sb = model.init(jax.random.key(1), x[:1])

    def curve():
        evaluate.interpolation_curve(
            model.apply, {"params": pa, "model_state": sa}, {"params": pb, "model_state": sb},
            data, alphas=num_alphas, norm="none", batch_size=batch_size, alpha_chunk=alpha_chunk,
        )  # fmt: skip

    forward = jax.jit(lambda p, xb: model.apply(p, sa, xb, False)[0])

    def plain():
        # Same batches as the curve (one transfer each), alphas forward passes over them.
        out = None
        for split_x, _ in data.values():
            for start in range(0, len(split_x), batch_size):
                xb = jnp.asarray(split_x[start : start + batch_size])
                for _ in range(num_alphas):
                    out = forward(pa, xb)
        out.block_until_ready()

    t_curve, t_plain = median_times([curve, plain], repeats)
    return {"curve_s": t_curve, "plain_s": t_plain, "ratio": t_curve / t_plain}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alphas", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--alpha-chunk", type=int, default=1)
    args = parser.parse_args(argv)
    r = run(args.n, args.alphas, args.repeats, args.batch_size, args.alpha_chunk)
    print(f"device: {jax.devices()[0].device_kind}  n={args.n}  alphas={args.alphas}  "
          f"alpha_chunk={args.alpha_chunk}")  # fmt: skip
    print(f"curve {r['curve_s']:.3f}s  plain {r['plain_s']:.3f}s  ratio {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
