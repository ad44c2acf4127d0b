"""How the trainer applies an objective to a batch, and what an objective may own beside the model.

Most objectives are per-example (:mod:`vaegen.objectives.bounds`): ``objective(model, variables,
x, key, step)`` on one observation, vmapped over the batch by :func:`batched`.  Three optional
methods let an objective do what a per-example function cannot, inside vaegen's one trainer
(fused steps, checkpoints, bitwise resume, the non-finite guard):

``batch_terms(model, variables, x [B, *event], keys [B], step, auxiliary) -> terms [B]``
    Terms that depend on the whole batch, e.g. the MMD between the batch's codes and samples of
    p(z) (:mod:`vaegen.objectives.matching`).  Each returned term is ``[B]``; the trainer
    maximises ``mean(terms["objective"])``, so a batch-level penalty is broadcast to every
    example.  ``auxiliary`` is the objective's own parameters (below), gradient-stopped.

Auxiliary parameters (an adversarial AE's discriminator), with their own optimizer:

``auxiliary_name``                            str: the prefix of their metrics (``<name>/loss``)
``init_auxiliary(key, model, variables)``     their initial values (a pytree)
``auxiliary_optimizer()``                     an ``optax.GradientTransformation`` for them
``auxiliary_loss(auxiliary, model, variables, x, keys, step) -> (loss [], terms {str: []})``
    the loss they minimise, with the model's ``variables`` gradient-stopped.

The trainer differentiates ``-mean(objective) + auxiliary_loss`` once, with respect to the
model's parameters and the auxiliary parameters together: the objective sees the auxiliary
parameters through a stop-gradient and the auxiliary loss sees the model's the same way, so each
gradient is that of its own loss.  One step updates both (each by its optimizer) or, if either
loss or gradient is not finite, neither.  Both optimizers' states are checkpointed.

``after_step(model, before, after, x, keys, step) -> variables``
    A deterministic update of the model's variables after the optimizer's (a VQ codebook's
    moving averages, restarting unused codes); ``before`` are the variables the step's loss was
    computed with, ``after`` those the optimizer produced.

Only the ``params`` collection of the model's variables is trained by the optimizer
(:func:`trainable`); other collections (a codebook's running statistics) change only through
``after_step``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

Terms = dict[str, jax.Array]


def batched(objective: Callable[..., Terms], model: Any, variables: Any, x: jax.Array, keys: jax.Array,
            step: jax.Array | int = 0) -> Terms:
    """Applies a per-example objective to a batch: ``x [B, *event]``, ``keys [B]`` -> terms ``[B]``."""
    return jax.vmap(lambda xi, ki: objective(model, variables, xi, ki, step))(x, keys)


def batch_terms(objective: Any, model: Any, variables: Any, x: jax.Array, keys: jax.Array,
                step: jax.Array | int = 0, auxiliary: Any = None) -> Terms:
    """The objective's terms on a batch, ``[B]`` each: its own ``batch_terms`` where it has one,
    else the per-example objective vmapped (:func:`batched`)."""
    own = getattr(objective, "batch_terms", None)
    if own is not None:
        return own(model, variables, x, keys, step, auxiliary)
    return batched(objective, model, variables, x, keys, step)


def has_auxiliary(objective: Any) -> bool:
    """True when ``objective`` owns parameters of its own (``init_auxiliary``)."""
    return callable(getattr(objective, "init_auxiliary", None))


def init_auxiliary(objective: Any, key: jax.Array, model: Any, variables: Any) -> dict[str, Any] | None:
    """``{"params", "opt_state"}`` of the objective's auxiliary parameters, or None."""
    if not has_auxiliary(objective):
        return None
    params = objective.init_auxiliary(key, model, variables)
    return {"params": params, "opt_state": objective.auxiliary_optimizer().init(params)}


def trainable(variables: Any) -> dict[str, Any]:
    """The part of a model's variables the optimizer trains: ``{"params": ...}``."""
    return {"params": variables["params"]}


def with_trainable(variables: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``variables`` with their ``params`` collection replaced by ``params["params"]``."""
    return {**variables, "params": params["params"]}
