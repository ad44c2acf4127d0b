"""How the trainer applies an objective to a batch, and what an objective may own beside the model.

Most objectives are per-example (:mod:`vaegen.objectives.bounds`): ``objective(model, variables,
x, key, step)`` on one observation, vmapped over the batch by :func:`batched`.  The hooks of the
:class:`vaegen.objectives.base.Objective` contract let an objective do what a per-example function
cannot, inside vaegen's one trainer: ``batch_terms`` (terms that depend on the whole batch, e.g.
the MMD between the batch's codes and samples of p(z)), ``after_step`` (a deterministic update of
the model's variables after the optimizer's), and auxiliary parameters of its own (an adversarial
AE's discriminator) with their own optimizer.

The trainer differentiates ``-mean(objective) + auxiliary_loss`` once, with respect to the
model's parameters and the auxiliary parameters together: the objective sees the auxiliary
parameters through a stop-gradient and the auxiliary loss sees the model's the same way, so each
gradient is that of its own loss.  One step updates both (each by its optimizer) or, if either
loss or gradient is not finite, neither.  Both optimizers' states are checkpointed.

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


def init_auxiliary(objective: Any, key: jax.Array, model: Any, variables: Any) -> dict[str, Any] | None:
    """``{"params", "opt_state"}`` of the objective's auxiliary parameters (an
    :class:`vaegen.objectives.base.Objective` with ``has_auxiliary``), or None."""
    if not objective.has_auxiliary:
        return None
    params = objective.init_auxiliary(key, model, variables)
    return {"params": params, "opt_state": objective.auxiliary_optimizer().init(params)}


def trainable(variables: Any) -> dict[str, Any]:
    """The part of a model's variables the optimizer trains: ``{"params": ...}``."""
    return {"params": variables["params"]}


def with_trainable(variables: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``variables`` with their ``params`` collection replaced by ``params["params"]``."""
    return {**variables, "params": params["params"]}
