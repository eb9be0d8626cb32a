"""How reliably weight matching recovers planted permutations on ResNet-20.

B = P(A) + noise, noise = `--noise` x (each leaf's std); a run counts as recovered
when every permutation equals P's inverse. A is one of
  random: fan-in scaled normal weights, random BatchNorm parameters and statistics;
  flax:   the model's own initializer (BatchNorm scale 1, bias 0: uninformative);
  digits: trained 8 epochs on sklearn's digits (SGD+momentum), the realistic case.

    python benchmarks/align_planted.py --seeds 20 --init random flax digits
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmc import align, models


def random_tree(shapes, rng):
    def draw(s):
        fan_in = int(np.prod(s.shape[:-1])) or 1
        return (rng.normal(size=s.shape) / np.sqrt(fan_in)).astype(np.float32)

    tree = jax.tree.map(draw, shapes)
    tree["model_state"] = jax.tree.map(lambda v: np.abs(v) + 0.5, tree["model_state"])
    return tree


def trained_on_digits(model, seed=0, epochs=8):
    from lmc import data

    ds = data.load("digits")
    params, state = jax.jit(model.init)(jax.random.key(seed), ds.train_x[:1])
    opt = optax.sgd(0.05, momentum=0.9)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, state, opt_state, x, y):
        def loss(p):
            logits, new_state = model.apply(p, state, x, True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

        grads, state = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(ds.train_y))
        for i in range(0, len(order) - 63, 64):
            idx = order[i : i + 64]
            params, state, opt_state = step(
                params, state, opt_state, ds.train_x[idx], ds.train_y[idx]
            )
    return jax.tree.map(np.asarray, {"params": params, "model_state": state}), ds.train_x[:1]


def noisy(tree, noise, rng):
    return jax.tree.map(
        lambda v: v + noise * np.std(v) * rng.normal(size=v.shape).astype(np.float32), tree
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--norm", default="batchnorm")
    parser.add_argument("--init", nargs="+", default=["random", "flax", "digits"])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05])
    args = parser.parse_args()
    model = models.build("resnet20", 10, width=args.width, norm=args.norm)
    for init in args.init:
        trained, x = (
            trained_on_digits(model) if init == "digits" else (None, jnp.zeros((1, 32, 32, 3)))
        )
        spec = align.spec_from_model(model, x)
        shapes, _ = align.trace.model_shapes(model, x)
        flax_init = functools.partial(_init_with_seed, jax.jit(model.init), x)
        for noise in args.noise:
            run(args, spec, shapes, init, noise, trained, flax_init)


def _init_with_seed(init, x, seed):
    return init(jax.random.key(seed), x)


def run(args, spec, shapes, init, noise, trained, flax_init):
    ok, sweeps, secs = 0, [], []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        if init == "random":
            a = random_tree(shapes, rng)
        elif init == "flax":
            params, state = flax_init(seed)
            a = jax.tree.map(np.asarray, {"params": params, "model_state": state})
        else:
            a = trained
        planted = align.random_permutations(spec, jax.random.key(seed + 1000), a)
        b = align.apply_permutation(spec, planted, a)
        b["params"] = noisy(b["params"], noise, rng)
        t = time.perf_counter()
        perms, info = align.weight_matching(
            spec, a["params"], b["params"], key=jax.random.key(seed)
        )
        secs.append(time.perf_counter() - t)
        sweeps.append(info["sweeps"])
        inverse = align.inverse(planted)
        ok += all(np.array_equal(np.asarray(perms[k]), np.asarray(inverse[k])) for k in perms)
    print(
        json.dumps(
            {
                "model": f"resnet20 x{args.width} {args.norm}",
                "init": init,
                "noise_rel_std": noise,
                "recovered": ok,
                "seeds": args.seeds,
                "mean_sweeps": float(np.mean(sweeps)),
                "mean_align_s": round(float(np.mean(secs)), 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
