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
    # pair | instability | width | merge_many | code_vs_prose | parent (lmc.experiments)
    c.experiment = "pair"
    c.seed = 0  # the parent's init, data and aug seed (children: spawn.child_seeds)

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # digits | fashion_mnist | cifar10 | synthetic | tfds:* | text:*
    c.data.dir = ""  # default location of the source (or its env var)
    c.data.augment = True  # only applies to augmentable (natural-image) data

    c.model = ml_collections.ConfigDict()
    # mlp | cnn | vgg11 | vgg16 | resnet20 | transformer, or a plug-in "package.module:factory":
    # factory(num_classes, input_shape, config=config.model[, rngs]) returns a flax.linen
    # Module, or an nnx.Module built from `rngs` (lmc.models.plugin)
    c.model.name = "mlp"
    c.model.width = 512  # units (mlp), base channels (cnn), multiplier (vgg, resnet20)
    c.model.depth = 3  # hidden layers (mlp), blocks (transformer)
    c.model.norm = "none"  # none | batchnorm | layernorm (conv nets; rmsnorm: transformer)

    c.optimizer = ml_collections.ConfigDict()
    # SGD+momentum: Adam-trained MLPs on digits align markedly worse (measured: weight
    # matching keeps ~22% of the naive test-loss barrier with Adam, ~7% with SGD).
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.05  # peak step size (after warmup)
    c.optimizer.momentum = 0.9  # sgd only
    c.optimizer.weight_decay = 0.0  # decoupled (adamw); L2 added to the gradient (sgd)
    c.optimizer.schedule = "constant"  # constant | step (decay_at) | cosine
    c.optimizer.warmup_steps = 0  # linear warmup from 0
    c.optimizer.decay_at = (0.5, 0.75)  # step schedule: fractions of training
    c.optimizer.decay_factor = 0.1  # step schedule: factor at each decay_at

    c.batch_size = 32  # global: split over the devices of config.mesh
    c.num_epochs = 30.0  # training length when num_steps is 0
    c.num_steps = 0  # > 0 overrides num_epochs
    c.eval_every_steps = 0  # 0: only at the end
    c.log_every_steps = 50  # train metrics to metrics.jsonl and the NaN guard
    c.progress = True  # a bar on a terminal; a line every ~30 s in logs
    # Trackers fed beside metrics.jsonl (lmc.runtime.tracking), each an optional extra
    # (pip install 'lmc[tensorboard]', 'lmc[wandb]'); not part of the config hash.
    c.log = ml_collections.ConfigDict()
    c.log.trackers = ()  # tensorboard and/or wandb, e.g. --config.log.trackers=tensorboard,wandb
    c.log.wandb_project = "lmc"  # wandb: the W&B project
    c.log.wandb_entity = ""  # "": W&B's default entity
    c.log.wandb_mode = ""  # "": W&B's default (WANDB_MODE) | online | offline | disabled

    # How the two endpoints are made. "independent": different init seeds (the
    # Git Re-Basin setting). "spawn": one parent trained to `step`, children continued
    # from its checkpoint with their own data order and augmentation (Frankle et al.).
    c.spawn = ml_collections.ConfigDict()
    c.spawn.mode = "independent"  # independent | spawn
    c.spawn.step = 0  # spawn mode: the parent's step the children continue from
    # Child i uses seed child_seeds[i] for its data order and augmentation (and, in
    # independent mode, its init). Equal seeds give identical children.
    c.spawn.child_seeds = (1, 2)
    # Train the children together as one vmapped population (one jitted step for all;
    # faster for small models, see benchmarks/bench_population.py).
    c.spawn.population = False

    # Device mesh for data parallelism (lmc.runtime.sharding): batch split over data x fsdp
    # devices; data=-1 takes every device; fsdp>1 shards arrays >= fsdp_min_size.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel devices; -1: all
    c.mesh.fsdp = 1  # devices each parameter is sharded over
    c.mesh.fsdp_min_size = 2**16  # smaller arrays stay replicated

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0  # 0: only the spawn step(s) and the end
    c.checkpoint.max_to_keep = 2  # periodic checkpoints kept (spawn steps: always)

    c.eval = ml_collections.ConfigDict()
    c.eval.num_alphas = 25  # evenly spaced points of the curve, ends included
    # naive | weight_matching | activation_matching | ste | weight_matching_heads |
    # weight_matching_orthogonal | learned_matching | activation_matching_heads |
    # learned_matching_invertible | learned_matching_dual | lowrank_control, each
    # optionally +reset or +repair; circuit (heads merged in circuit form: a larger
    # midpoint, reported apart from the same-shape methods)
    c.eval.methods = ("naive", "weight_matching")
    c.eval.train_subset = 10000  # first N training examples used for train-side curves
    c.eval.batch_size = 1000  # rows per evaluation batch
    c.eval.norm = "auto"  # auto: reset for BatchNorm models, none otherwise
    c.eval.bn_reset_batches = 20  # training batches that recompute statistics (reset, repair)

    c.align = ml_collections.ConfigDict()
    c.align.seed = 0  # visiting order of the matching methods
    c.align.max_iter = 100  # weight matching: sweeps over the permutations at most
    c.align.ste_steps = 200  # ste: straight-through optimisation steps
    c.align.activation_batches = 10  # activation matching: training batches correlated
    # learned_matching: Adam steps (one training batch and one interpolation weight
    # each) and step size for the orthogonal maps' generators.
    c.align.learned_steps = 1000
    c.align.learned_lr = 1e-2  # learned_matching: Adam step size
    # learned methods: batches held out of the alignment stream for early stopping on
    # the held-out path loss, measured every learned_eval_every steps (0: no holdout).
    c.align.learned_holdout = 0
    c.align.learned_eval_every = 50  # steps between held-out path-loss measurements
    # circuit: the same-shape method that aligns the residual stream and MLP units
    # before the heads are merged in circuit form (which needs no head alignment).
    c.align.circuit_base = "weight_matching_orthogonal"

    # Sweep experiments (ignored by `pair`).
    c.instability = ml_collections.ConfigDict()
    c.instability.spawn_steps = (0, 10, 50)  # the steps k children are spawned at
    c.instability.num_pairs = 1  # pairs of children per k (2 child seeds each)
    # The first k from which the mean test-error barrier stays <= this is the onset k*.
    c.instability.stable_threshold = 0.02  # stable: barrier <= 0.02 (Frankle's 2 points)
    c.width = ml_collections.ConfigDict()
    c.width.multipliers = (0.25, 1.0)  # model.width is scaled by each
    c.width.num_pairs = 1  # pairs of children per width (2 child seeds each)
    c.merge = ml_collections.ConfigDict()
    c.merge.num_models = 3  # merge_many: models merged (one child seed each)

    # Given networks instead of trained ones (pair, merge_many; configs/checkpoint_pair.py):
    # Hugging Face checkpoint directories (config.json + safetensors) of one architecture,
    # with config.model.name = "checkpoint". Endpoint i is [a, b, *more][i]; merge_many
    # merges all of them (config.merge.num_models is then their number).
    c.checkpoints = ml_collections.ConfigDict()
    c.checkpoints.a = ""  # endpoint a's checkpoint directory ("": train the endpoints)
    c.checkpoints.b = ""  # endpoint b's checkpoint directory
    c.checkpoints.more = ()  # merge_many: further checkpoint directories
    return c


def lm_config() -> ml_collections.ConfigDict:
    """`base_config()` with the keys of text data and the transformer, and the defaults
    the `configs/lm_*.py` share: a 2-layer, width-128, 4-head byte-level transformer
    with 64-byte context, trained with Adam (warmup + cosine) on batches of 16 windows.
    Sized to train in minutes on 2 CPU cores."""
    c = base_config()
    c.data.name = "text:mixed"  # text:code | text:prose | text:mixed (bytes)
    c.data.context = 64  # bytes per window
    c.data.eval_windows = 96  # fixed evaluation windows per domain and split
    c.data.test_fraction = 0.1  # fraction of files held out (by hash of the path)
    c.data.max_bytes = 4_000_000  # per domain and split
    c.data.mix = 0.5  # text:mixed: probability that a training window is code
    c.data.code_dir = ""  # "" = the Python standard library
    c.data.prose_dir = ""  # "" = /usr/share/doc/python3.11/html/_sources
    # "" = bytes; a tokenizer.json or a directory with one; "checkpoint": checkpoints.a's
    c.data.tokenizer = ""  # tokenizer of text data ("": bytes)

    c.model.name = "transformer"  # lmc's byte LM, a plug-in, or "checkpoint" (checkpoints.a's)
    c.model.width = 128  # d_model
    c.model.depth = 2  # transformer blocks
    c.model.heads = 4  # attention heads (width divisible by it)
    c.model.context = 64  # learned positions: at least data.context
    c.model.mlp_ratio = 4  # MLP hidden width / model width
    c.model.positions = "learned"  # "rotary" removes the within-head Q/K permutation
    c.model.norm = "layernorm"  # layernorm | rmsnorm

    c.optimizer.name = "adam"  # sgd | adam | adamw
    c.optimizer.learning_rate = 4e-3  # best of {2e-3, 4e-3, 8e-3} at 300 steps
    c.optimizer.schedule = "cosine"  # to 0 at the last step
    c.optimizer.warmup_steps = 50  # linear warmup from 0
    c.batch_size = 16  # windows per step
    c.num_steps = 400  # > 0 overrides num_epochs
    c.log_every_steps = 50  # train metrics to metrics.jsonl and the NaN guard

    c.eval.num_alphas = 9  # evenly spaced points of the curve, ends included
    c.eval.batch_size = 128  # windows per evaluation batch
    c.eval.train_subset = 0  # text: the fixed held-in windows (config.data.eval_windows)
    # naive | weight_matching | activation_matching | ste | weight_matching_heads |
    # weight_matching_orthogonal | learned_matching | activation_matching_heads |
    # learned_matching_invertible | learned_matching_dual | lowrank_control, each
    # optionally +reset or +repair; circuit (heads merged in circuit form: a larger
    # midpoint, reported apart from the same-shape methods)
    c.eval.methods = ("naive", "weight_matching")

    # code_vs_prose: task-arithmetic scales, and the extra pair from independent inits.
    # Its fork steps are config.instability.spawn_steps.
    c.lm = ml_collections.ConfigDict()
    c.lm.scales = (0.5, 1.0)  # task arithmetic: theta_k + s * (both children's updates)
    c.lm.independent = True  # also a prose child from another init, averaged per method
    return c
