"""VGG-16 (BatchNorm) on CIFAR-10 (Frankle et al. 2020's recipe), independent inits.

    lmc run --config=configs/vgg16_cifar10.py --workdir=runs/vgg16 \\
        --config.data.dir=/path/to/cifar-10-batches-py

Literature: VGG-16 reaches about 93.7% test accuracy (Frankle et al. 2020, Table 1);
Git Re-Basin (Ainsworth et al. 2022, Fig. 5) shows weight matching closing most of
the barrier only for wide VGGs. Argument: width multiplier (default 1).
"""

import ml_collections

from lmc.config_base import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "cifar10"
    # VGG widths are float multipliers; a fresh ConfigDict gives the field that type.
    c.model = ml_collections.ConfigDict(
        {"name": "vgg16", "width": float(arg or 1), "depth": 0, "norm": "batchnorm"}
    )
    c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 0.1, 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 1000
    c.optimizer.schedule, c.optimizer.decay_at = "step", (32000 / 63000, 48000 / 63000)
    c.batch_size = 128
    c.num_steps = 63000
    c.eval_every_steps = 5000
    c.checkpoint.every_steps = 5000
    c.eval.methods = ("naive+reset", "weight_matching+reset")
    return c
