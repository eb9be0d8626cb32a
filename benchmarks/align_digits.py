"""End-to-end alignment quality on real data: two digits MLPs from independent inits.

Trains A and B (SGD+momentum, batch 32, as `configs/default.py`; Adam-trained MLPs
align markedly worse), then compares the test-loss barrier on the line A -> B before
and after alignment.

    python benchmarks/align_digits.py                     # 3x512, 30 epochs
    python benchmarks/align_digits.py --width 2048 --save /tmp/digits_2048.npz
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmc import align, data, models


def train(model, ds, seed: int, epochs: int, batch: int = 32, lr: float = 0.05):
    params, state = model.init(jax.random.key(seed), ds.train_x[:1])
    opt = optax.sgd(lr, momentum=0.9)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss(p):
            logits, _ = model.apply(p, state, x, False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(ds.train_y))
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i : i + batch]
            params, opt_state = step(params, opt_state, ds.train_x[idx], ds.train_y[idx])
    return params, state


def barrier(model, state, pa, pb, x, y, num=11):
    @jax.jit
    def loss(alpha):
        p = jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, pa, pb)
        logits, _ = model.apply(p, state, x, False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    alphas = np.linspace(0, 1, num)
    losses = np.array([float(loss(a)) for a in alphas])
    return float(np.max(losses - ((1 - alphas) * losses[0] + alphas * losses[-1])))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--save", default=None, help="write both trained params to this .npz")
    args = parser.parse_args()
    ds = data.load("digits")
    model = models.build("mlp", 10, width=args.width, depth=3)
    pa, state = train(model, ds, 1, args.epochs)
    pb, _ = train(model, ds, 2, args.epochs)
    spec = align.spec_from_model(model, ds.train_x[:1])
    t = time.perf_counter()
    perms, info = align.weight_matching(spec, pa, pb, key=jax.random.key(0))
    align_s = time.perf_counter() - t
    pb2 = align.apply_permutation(spec, perms, {"params": pb, "model_state": {}})["params"]
    x, y = jnp.asarray(ds.test_x), jnp.asarray(ds.test_y)
    naive, aligned = barrier(model, state, pa, pb, x, y), barrier(model, state, pa, pb2, x, y)
    print(
        json.dumps(
            {
                "width": args.width,
                "naive_test_loss_barrier": round(naive, 4),
                "aligned_test_loss_barrier": round(aligned, 4),
                "ratio": round(aligned / naive, 4),
                "align_s": round(align_s, 2),
                "sweeps": info["sweeps"],
            }
        )
    )
    if args.save:
        flat = {f"a/{'/'.join(p)}": np.asarray(v) for p, v in align.trace.tree_paths(pa)}
        flat.update({f"b/{'/'.join(p)}": np.asarray(v) for p, v in align.trace.tree_paths(pb)})
        np.savez(args.save, **flat)


if __name__ == "__main__":
    main()
