"""The base configs, one per model family: the only place config defaults live.

- `base_config()`: every key any experiment reads, with the defaults of
  `configs/default.py` (image classification).
- `lm_config()`: `base_config()` plus the keys of text data and the transformer, with
  the language-model defaults (`configs/lm_*.py`).

Paper configs in `configs/` start from one of them and change what differs; code reads
`config.x.y` directly (never `.get(key, default)`), so an unknown key fails at once.
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
    # learned_matching: Adam steps (one training batch and one interpolation weight
    # each) and step size for the orthogonal maps' generators.
    c.align.learned_steps = 1000
    c.align.learned_lr = 1e-2

    # Sweep experiments (ignored by `pair`).
    c.instability = ml_collections.ConfigDict()
    c.instability.spawn_steps = (0, 10, 50)
    c.instability.num_pairs = 1
    # Stable from k on: the mean test-error barrier stays at or below this fraction
    # (0.02 = Frankle et al.'s 2 points); the first such k is the reported onset k*.
    c.instability.stable_threshold = 0.02
    c.width = ml_collections.ConfigDict()
    c.width.multipliers = (0.25, 1.0)
    c.width.num_pairs = 1
    c.merge = ml_collections.ConfigDict()
    c.merge.num_models = 3
    return c


def lm_config() -> ml_collections.ConfigDict:
    """`base_config()` with the keys of text data and the transformer, and the defaults
    the `configs/lm_*.py` share: a 2-layer, width-128, 4-head byte-level transformer
    with 64-byte context, trained with Adam (warmup + cosine) on batches of 16 windows.
    Sized to train in minutes on 2 CPU cores."""
    c = base_config()
    c.data.name = "text:mixed"
    c.data.context = 64
    c.data.eval_windows = 96  # fixed evaluation windows per domain and split
    c.data.test_fraction = 0.1  # fraction of files held out (by hash of the path)
    c.data.max_bytes = 4_000_000  # per domain and split
    c.data.mix = 0.5  # text:mixed: probability that a training window is code
    c.data.code_dir = ""  # "" = the Python standard library
    c.data.prose_dir = ""  # "" = /usr/share/doc/python3.11/html/_sources

    c.model.name = "transformer"
    c.model.width = 128
    c.model.depth = 2
    c.model.heads = 4
    c.model.context = 64
    c.model.mlp_ratio = 4
    c.model.positions = "learned"  # "rotary" removes the within-head Q/K permutation
    c.model.norm = "layernorm"

    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 4e-3  # best of {2e-3, 4e-3, 8e-3} at 300 steps
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 50
    c.batch_size = 16
    c.num_steps = 400
    c.log_every_steps = 50

    c.eval.num_alphas = 9
    c.eval.batch_size = 128
    c.eval.train_subset = 0  # text: the fixed held-in windows (config.data.eval_windows)
    c.eval.methods = ("naive", "weight_matching")

    # code_vs_prose: task-arithmetic scales, and the extra pair from independent inits.
    # Its fork steps are config.instability.spawn_steps.
    c.lm = ml_collections.ConfigDict()
    c.lm.scales = (0.5, 1.0)
    c.lm.independent = True
    return c
