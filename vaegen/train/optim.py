"""The optimiser: the optax transformation (:func:`make_optimizer`) and learning-rate schedule that
the ``optim`` section of a config (:class:`vaegen.spec.optim.OptimSettings`) describes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vaegen.errors import ConfigError
from vaegen.spec.optim import OptimSettings


def make_schedule(cfg: OptimSettings, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the step (warm-up, then the ``schedule``)."""
    lr = cfg.learning_rate
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    decay_steps = max(1, int(round(cfg.decay_epochs * steps_per_epoch)))
    if cfg.schedule == "constant":
        schedule = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.final_lr_fraction)
    elif cfg.schedule == "exponential":
        schedule = optax.exponential_decay(lr, transition_steps=decay_steps, decay_rate=cfg.decay_rate)
    elif cfg.schedule == "stages":
        schedule = stage_schedule(lr, cfg.stage_epochs, cfg.stage_factors, steps_per_epoch)
    else:
        raise ConfigError(f"unknown schedule {cfg.schedule!r}")
    if warmup > 0:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
    return schedule


def make_optimizer(cfg: OptimSettings, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimiser and learning-rate schedule of the ``optim`` section."""
    schedule = make_schedule(cfg, steps_per_epoch)
    if cfg.optimizer == "adam":
        opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                          weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = optax.sgd(schedule, momentum=cfg.momentum or None)
    else:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}")
    if cfg.normalize_gradients != "none":
        opt = optax.chain(normalize_gradients(cfg.normalize_gradients), opt)
    if cfg.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
    return opt


def stage_schedule(lr: float, stage_epochs, stage_factors, steps_per_epoch: int) -> optax.Schedule:
    """A piecewise-constant learning rate: ``lr * stage_factors[i]`` for ``stage_epochs[i]`` epochs,
    the last factor thereafter (the IWAE paper's schedule: 3^i epochs at 1e-3 * 10^(-i/7),
    i = 0..7, 3,280 epochs in all)."""
    factors = [float(f) for f in stage_factors]
    ends = np.cumsum([int(e) * steps_per_epoch for e in stage_epochs])[:-1]
    values = jnp.asarray([lr * f for f in factors], jnp.float32)
    bounds = jnp.asarray(ends, jnp.int32)

    def schedule(step):
        return values[jnp.searchsorted(bounds, step, side="right")]

    return schedule


def normalize_gradients(mode: str, eps: float = 1e-7) -> optax.GradientTransformation:
    """Scales the gradient to unit norm before the optimiser: ``per_tensor`` divides each
    parameter's gradient by its own norm (+ eps), as the VampPrior code's AdamNormGrad does;
    ``global`` divides the whole gradient by its global norm."""
    if mode == "per_tensor":
        def per_tensor(grads, params):
            del params
            return jax.tree_util.tree_map(lambda g: g / (jnp.linalg.norm(g) + eps), grads)

        return optax.stateless(per_tensor)
    if mode == "global":
        def global_(grads, params):
            del params
            norm = optax.global_norm(grads)
            return jax.tree_util.tree_map(lambda g: g / (norm + eps), grads)

        return optax.stateless(global_)
    raise ConfigError(f"unknown optim.normalize_gradients {mode!r}; choose none, per_tensor or global")
