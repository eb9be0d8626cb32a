"""Instability onset (Frankle et al. 2020) on Fashion-MNIST: a BatchNorm CNN (DRAFT)."""

from lmc.config_base import base_config

SPAWN_STEPS = (0, 50, 100, 200, 400)
NUM_PAIRS = 3


def get_config(arg: str | None = None):
    del arg
    c = base_config()
    c.experiment = "instability"
    c.data.name = "fashion_mnist"
    c.model.name, c.model.width, c.model.norm = "cnn", 16, "batchnorm"
    c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 0.2, 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "step"
    c.batch_size = 128
    c.num_steps = 1500
    c.spawn.mode = "spawn"
    c.spawn.child_seeds = tuple(range(1, 2 * NUM_PAIRS + 1))
    c.instability.spawn_steps = SPAWN_STEPS
    c.instability.num_pairs = NUM_PAIRS
    c.eval.methods = ("naive",)
    c.eval.num_alphas = 11
    c.eval.train_subset = 5000
    return c
