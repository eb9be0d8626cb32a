"""Instability analysis (Frankle et al. 2020) of the 3x512 MLP on Fashion-MNIST.

A parent is trained with SGD; at each spawn step k two children continue from its
checkpoint with different data orders; the test-error barrier between them is
plotted versus k (barrier_vs_k.png).

Launch (one run covering every k):

    lmc run --config=configs/instability_mlp_fashion_mnist.py --workdir=runs/instab_fmnist

or as a sweep, one `lmc run` per (k, pair) point after one shared parent, resumable,
ending in the same barrier_vs_k.png (points can run in parallel or on other hosts):

    lmc sweep --config=configs/instability_mlp_fashion_mnist.py --workdir=runs/instab_sweep

Literature: Frankle et al. (2020) find small MNIST networks (LeNet) stable already
at initialization (k=0): the barrier between children is ~0 for every k.
"""

from lmc.config_base import base_config


def get_config(arg: str | None = None):
    del arg
    c = base_config()
    c.experiment = "instability"
    c.data.name = "fashion_mnist"
    c.data.augment = False  # measured without crops/flips (Git Re-Basin trains unaugmented)
    c.model.name, c.model.width, c.model.depth = "mlp", 512, 3
    c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 0.05, 0.9
    c.batch_size = 128
    c.num_epochs = 2.0
    c.spawn.mode = "spawn"
    c.spawn.child_seeds = (1, 2, 3, 4)
    c.instability.spawn_steps = (0, 25, 100, 400)
    c.instability.num_pairs = 2
    c.eval.methods = ("naive",)
    c.eval.train_subset = 10000
    return c


def sweep(config):
    """One `lmc run` per (spawn step, pair of children), every k of the single run: the
    points share one parent (`lmc sweep` trains it once, first), and the sweep ends in
    one barrier_vs_k.png with mean ± std over the 2 pairs at each k. `config` has the
    command-line overrides: `--config.instability.spawn_steps=...` changes the grid."""
    for k in config.instability.spawn_steps:
        for pair in range(config.instability.num_pairs):
            yield {
                "instability.spawn_steps": (k,),
                "instability.num_pairs": 1,
                "spawn.child_seeds": tuple(config.spawn.child_seeds[2 * pair : 2 * pair + 2]),
            }
