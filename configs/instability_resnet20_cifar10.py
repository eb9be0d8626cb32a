"""Frankle et al. (2020)'s instability analysis of ResNet-20 on CIFAR-10.

    lmc run --config=configs/instability_resnet20_cifar10.py --workdir=runs/instab_r20 \\
        --config.data.dir=/path/to/cifar-10-batches-py
    lmc sweep --config=configs/instability_resnet20_cifar10.py --workdir=runs/instab_r20_sweep

Literature: ResNet-20 is unstable at initialization (test-error barrier of tens of
percent for k=0) and becomes stable (barrier ~0) after about 2000 iterations,
about 3% of training (Frankle et al. 2020, Fig. 3 and Table 1).
"""

from lmc.config_base import base_config

SPAWN_STEPS = (0, 100, 250, 500, 1000, 2000, 4000, 8000)


def get_config(arg: str | None = None):
    del arg
    c = base_config()
    c.experiment = "instability"
    c.data.name = "cifar10"
    c.model.name, c.model.width, c.model.norm = "resnet20", 1, "batchnorm"
    c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 0.1, 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule, c.optimizer.decay_at = "step", (32000 / 63000, 48000 / 63000)
    c.batch_size = 128
    c.num_steps = 63000
    c.checkpoint.every_steps = 5000
    c.spawn.mode = "spawn"
    c.spawn.child_seeds = (1, 2, 3, 4, 5, 6)
    c.instability.spawn_steps = SPAWN_STEPS
    c.instability.num_pairs = 3
    c.eval.methods = ("naive",)
    return c


def sweep():
    for k in SPAWN_STEPS:
        for pair in range(3):
            yield {
                "instability.spawn_steps": (k,),
                "instability.num_pairs": 1,
                "spawn.child_seeds": (2 * pair + 1, 2 * pair + 2),
            }
