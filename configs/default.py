"""Default experiment: two 3x512 MLPs on scikit-learn's digits, independent inits.

Launch (the same as a bare `lmc run`):

    lmc run --config=configs/default.py --workdir=runs/default

Expected: both endpoints reach about 99% test accuracy (SGD+momentum, 30 epochs); the
naive test-loss barrier is about 1.1 nats and weight matching leaves under 10% of it
(Git Re-Basin, Ainsworth et al. 2022, show the same picture for MLPs on MNIST). The
exact numbers and the wall time, measured, are in docs/default_run.json and the README
(`python docs/regenerate.py` remakes them; a test checks them against a fresh run).
"""

from lmc.config_base import base_config


def get_config(arg: str | None = None):
    del arg
    return base_config()
