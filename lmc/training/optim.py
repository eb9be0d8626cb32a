"""Optimizers and learning-rate schedules from config, all optax."""

from __future__ import annotations

import optax

from lmc.errors import UserError, choose

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "linear")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    """`cfg.schedule`: constant | cosine (warmup + cosine to 0) | step (x`decay_factor` at
    each fraction in `decay_at`) | linear (warmup + linear to 0, Frankle et al.'s ResNet-20)."""
    choose("schedule", cfg.schedule, SCHEDULES)
    lr, warmup = float(cfg.learning_rate), int(cfg.warmup_steps)
    if lr <= 0:
        raise UserError(f"config.optimizer.learning_rate must be positive, got {lr}")
    if warmup < 0 or warmup >= max(total_steps, 1) and warmup > 0:
        raise UserError(
            f"config.optimizer.warmup_steps={warmup} must be in [0, total steps={total_steps})"
        )
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
    elif cfg.schedule == "linear":
        main = optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))
    else:
        boundaries = {int(f * total_steps) - warmup: float(cfg.decay_factor) for f in cfg.decay_at}
        main = optax.piecewise_constant_schedule(lr, boundaries)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    choose("optimizer", cfg.name, OPTIMIZERS)
    schedule = make_schedule(cfg, total_steps)
    wd = float(cfg.weight_decay)
    if cfg.name == "sgd":
        # Coupled L2 (added to the gradient before momentum), as in the PyTorch references.
        return optax.chain(
            optax.add_decayed_weights(wd) if wd else optax.identity(),
            optax.sgd(schedule, momentum=float(cfg.momentum) or None, nesterov=False),
        )
    if cfg.name == "adam":
        return optax.chain(
            optax.add_decayed_weights(wd) if wd else optax.identity(), optax.adam(schedule)
        )
    return optax.adamw(schedule, weight_decay=wd)
