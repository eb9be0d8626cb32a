"""The base config: every key, with the defaults of `configs/default.py`.

Paper configs in `configs/` start from `base_config()` and change what differs.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every key any experiment reads, with the default experiment's values."""
    c = ml_collections.ConfigDict()
    c.experiment = "pair"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.dir = ""  # default location of the source (or its env var)
    c.data.augment = True  # only applies to augmentable (natural-image) data

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.width = 512
    c.model.depth = 3
    c.model.norm = "none"

    c.optimizer = ml_collections.ConfigDict()
    # SGD+momentum: Adam-trained MLPs on digits align markedly worse (measured: weight
    # matching keeps ~22% of the naive test-loss barrier with Adam, ~7% with SGD).
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.05
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 0
    c.optimizer.decay_at = (0.5, 0.75)
    c.optimizer.decay_factor = 0.1

    c.batch_size = 32
    c.num_epochs = 30.0
    c.num_steps = 0  # > 0 overrides num_epochs
    c.eval_every_steps = 0  # 0: only at the end
    c.log_every_steps = 50
    c.progress = True

    # How the two endpoints are made. "independent": different init seeds (the
    # Git Re-Basin setting). "spawn": one parent trained to `step`, children continued
    # from its checkpoint with their own data order and augmentation (Frankle et al.).
    c.spawn = ml_collections.ConfigDict()
    c.spawn.mode = "independent"
    c.spawn.step = 0
    # Child i uses seed child_seeds[i] for its data order and augmentation (and, in
    # independent mode, its init). Equal seeds give identical children.
    c.spawn.child_seeds = (1, 2)
    # Train the children together as one vmapped population (one jitted step for all;
    # faster for small models, see benchmarks/bench_population.py).
    c.spawn.population = False

    # Device mesh for data parallelism (lmc.sharding): batch split over data x fsdp
    # devices; data=-1 takes every device; fsdp>1 shards arrays >= fsdp_min_size.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.fsdp_min_size = 2**16

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0  # 0: only the spawn step(s) and the end
    c.checkpoint.max_to_keep = 2

    c.eval = ml_collections.ConfigDict()
    c.eval.num_alphas = 25
    c.eval.methods = ("naive", "weight_matching")
    c.eval.train_subset = 10000  # first N training examples used for train-side curves
    c.eval.batch_size = 1000
    c.eval.norm = "auto"  # auto: reset for BatchNorm models, none otherwise
    c.eval.bn_reset_batches = 20

    c.align = ml_collections.ConfigDict()
    c.align.seed = 0
    c.align.max_iter = 100
    c.align.ste_steps = 200
    c.align.activation_batches = 10

    # Sweep experiments (ignored by `pair`).
    c.instability = ml_collections.ConfigDict()
    c.instability.spawn_steps = (0, 10, 50)
    c.instability.num_pairs = 1
    c.width = ml_collections.ConfigDict()
    c.width.multipliers = (0.25, 1.0)
    c.width.num_pairs = 1
    c.merge = ml_collections.ConfigDict()
    c.merge.num_models = 3
    return c
