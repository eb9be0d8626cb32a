"""Default experiment: two 3x512 MLPs on scikit-learn's digits, independent inits.

Launch (the same as a bare `lmc run`):

    lmc run --config=configs/default.py --workdir=runs/default

Expected (measured on 2 CPU cores, see README): both endpoints reach about 99% test
accuracy (SGD+momentum, 30 epochs); the naive test-loss barrier is about 1.1 nats and
weight matching leaves about 0.08, under 10% of it (Git Re-Basin, Ainsworth et al.
2022, show the same picture for MLPs on MNIST). Finishes in about a minute.
"""

from lmc.config_base import base_config


def get_config(arg: str | None = None):
    del arg
    return base_config()
