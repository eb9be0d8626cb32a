"""ResNet-20 on CIFAR-10 (Frankle et al. 2020's recipe), independent inits.

Argument: the width multiplier (default 1), e.g.

    lmc run --config=configs/resnet20_cifar10.py:4 --workdir=runs/resnet20x4 \\
        --config.data.dir=/path/to/cifar-10-batches-py

Literature: trained this way ResNet-20 reaches about 91.7% test accuracy (Frankle et
al. 2020, Table 1). For width x4 merged by weight matching, REPAIR (Jordan et al.
2022) reports 11.7% accuracy at alpha=0.5 with stale BatchNorm statistics and 90.3%
after resetting them (the `+reset` methods; RESET is the default for BN models).
Budget: 63K steps at batch 128: use a GPU/TPU (benchmarks/README.md has the CPU step rate).
"""

from lmc.config_base import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "cifar10"
    c.data.augment = True
    c.model.name, c.model.width, c.model.norm = "resnet20", int(arg or 1), "batchnorm"
    c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 0.1, 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule, c.optimizer.decay_at = "step", (32000 / 63000, 48000 / 63000)
    c.batch_size = 128
    c.num_steps = 63000
    c.eval_every_steps = 5000
    c.checkpoint.every_steps = 5000
    c.eval.methods = ("naive", "weight_matching", "naive+reset", "weight_matching+reset")
    c.eval.norm = "none"  # the +reset suffix turns it on: both curves land side by side
    return c
