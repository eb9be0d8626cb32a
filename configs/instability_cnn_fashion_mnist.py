"""Frankle et al. (2020)'s instability onset on Fashion-MNIST: a BatchNorm CNN that is
unstable at initialization and stable after a short stretch of training.

Recipe in the spirit of theirs for ResNet-20: a conv net with BatchNorm (two 3x3 conv
blocks of 8 and 16 channels, a 32-unit dense layer), SGD with momentum 0.9 at a high
learning rate (0.2) with step decay (x0.1 at 50% and 75% of training), weight decay
5e-4, batches of 128 with random crops (4-pixel padding) and horizontal flips; 800
steps (1.7 epochs). Children spawned at step k differ only in data order and
augmentation (their seeds); 3 pairs per k; the barrier is measured naively, with
BatchNorm statistics recomputed along the path (eval.norm auto).

Launch (one shared parent, one `lmc run` per (k, pair), pooled into one
barrier_vs_k.png, results.json and k*):

    lmc sweep --config=configs/instability_cnn_fashion_mnist.py --workdir=runs/onset_fmnist --parallel=2

or everything in one process: `lmc run --config=configs/instability_cnn_fashion_mnist.py
--workdir=runs/onset_fmnist_run`.

Expected (measured, see docs/results/instability_onset.md; docs/onset_fashion_mnist.json):
naive test-error barrier 38.4 ± 7.8 points at k=0 (3 pairs), 5.6 at k=50, 2.5 at k=200,
2.1 at k=400 and 1.8 at k=600, so k* = 600 (75% of training) by the 2-point criterion.
That page gives the wall time it took and on which machine.

Literature (Frankle et al. 2020, test-error barrier, stable = below 2 points): LeNet on
MNIST is stable at k=0; ResNet-20 on CIFAR-10 becomes stable around iteration 2000
(about 3% of training), VGG-16 around 1000, ResNet-50 on ImageNet around epoch 18 of 90.
"""

from lmc.config_base import base_config

SPAWN_STEPS = (0, 50, 100, 200, 400, 600)
NUM_PAIRS = 3


def get_config(arg: str | None = None):
    del arg
    c = base_config()
    c.experiment = "instability"
    c.data.name = "fashion_mnist"
    c.data.augment = True  # random crop + flip: part of the SGD noise children differ in
    c.model.name, c.model.width, c.model.norm = "cnn", 8, "batchnorm"
    c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 0.2, 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule, c.optimizer.decay_at = "step", (0.5, 0.75)
    c.batch_size = 128
    c.num_steps = 800
    c.spawn.mode = "spawn"
    c.spawn.child_seeds = tuple(range(1, 2 * NUM_PAIRS + 1))
    c.instability.spawn_steps = SPAWN_STEPS
    c.instability.num_pairs = NUM_PAIRS
    c.eval.methods = ("naive",)
    c.eval.num_alphas = 11
    c.eval.train_subset = 5000
    return c


def sweep():
    """One `lmc run` per (spawn step, pair of children): the points share one parent
    (`lmc sweep` trains it once, first) and pool into one barrier_vs_k.png and k*."""
    for k in SPAWN_STEPS:
        for pair in range(NUM_PAIRS):
            yield {
                "instability.spawn_steps": (k,),
                "instability.num_pairs": 1,
                "spawn.child_seeds": (2 * pair + 1, 2 * pair + 2),
            }
