"""What a training objective is to vaegen's one trainer: the :class:`Objective` contract.

Every registered objective builds an :class:`Objective`.  It is called on **one** observation::

    terms = objective(model, variables, x, key, step)     # x [*event], key: PRNG key

and returns a dict of scalars, each term separately (nats where they are log-densities);
``terms["objective"]`` is what the trainer maximises.  Everything else an objective may do inside
the trainer (fused steps, checkpoints, bitwise resume, the non-finite guard) is one of the hooks
below, each with a default that does nothing special, so an objective overrides exactly the hooks
it needs and the trainer calls every hook of every objective (no hook is looked up by name):

``bound_name``                                 the term tracked on held-out data (``validation/<name>``)
``samples_per_example``                        z samples drawn per example (sizes evaluation batches)
``for_validation(validation_num_samples)``     the objective evaluated on held-out data
``batch_terms(model, variables, x, keys, step, auxiliary)``   terms that need the whole batch
``after_step(model, before, after, x, keys, step)``           a deterministic update after the optimizer's
``has_auxiliary``, ``auxiliary_name``, ``init_auxiliary``, ``auxiliary_optimizer``, ``auxiliary_loss``
                                               parameters of the objective's own, with their optimizer

See each method for its signature and meaning, and :mod:`vaegen.objectives.batch` for how the trainer
differentiates the objective and the auxiliary loss together.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax
import optax

from vaegen.objectives.batch import Terms, batched


class Objective(abc.ABC):
    """A training objective (see the module docstring).  Subclasses are frozen dataclasses that hold
    their registered settings object (``settings``) and their build context; they implement
    ``__call__`` and override the hooks they need."""

    HOOKS: ClassVar[tuple[str, ...]] = (
        "bound_name", "samples_per_example", "for_validation", "batch_terms", "after_step", "has_auxiliary",
        "auxiliary_name", "init_auxiliary", "auxiliary_optimizer", "auxiliary_loss",
    )
    """Every hook of the contract: the only attributes of an objective the trainer and the
    evaluation read."""

    bound_name: ClassVar[str] = "objective"
    """The term of ``__call__``'s dict tracked on held-out data (``validation/<bound_name>``) and used
    for early stopping: a bound on log p(x) where the objective has one."""

    has_auxiliary: ClassVar[bool] = False
    """Whether the objective owns parameters of its own (an adversarial AE's discriminator), trained
    beside the model's by :meth:`auxiliary_optimizer` on :meth:`auxiliary_loss`."""

    auxiliary_name: ClassVar[str] = "auxiliary"
    """The prefix of the auxiliary parameters' metrics (``<auxiliary_name>/loss``)."""

    @abc.abstractmethod
    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        """The terms of one example ``x [*event]`` (scalars), with ``terms["objective"]`` the quantity
        maximised; ``key`` is the example's own PRNG key, ``step`` the global step (schedules)."""

    @property
    def samples_per_example(self) -> int:
        """How many z one example draws (an evaluation pass sizes its batches by it)."""
        return 1

    def for_validation(self, validation_num_samples: int) -> "Objective":
        """The objective evaluated on held-out data at every validation: by default itself; a
        weighted or penalised objective returns its true bound (``validation_num_samples``: the
        ``eval.validation_num_samples`` of the run, for objectives that sample)."""
        del validation_num_samples
        return self

    def batch_terms(self, model: Any, variables: Any, x: jax.Array, keys: jax.Array, step: jax.Array | int = 0,
                    auxiliary: Any = None) -> Terms:
        """The terms of a batch ``x [B, *event]`` with one key per example ``keys [B]``: each term
        ``[B]``, the trainer maximising ``mean(terms["objective"])`` (a batch-level term is
        broadcast to every example).  By default the per-example ``__call__``, vmapped.
        ``auxiliary`` are the objective's own parameters (gradient-stopped), or None."""
        del auxiliary
        return batched(self, model, variables, x, keys, step)

    def after_step(self, model: Any, before: Any, after: Any, x: jax.Array, keys: jax.Array,
                   step: jax.Array | int = 0) -> Any:
        """The model's variables after a step: ``after`` (what the optimizer produced) updated
        deterministically from the batch (a VQ codebook's moving averages); ``before`` are the
        variables the step's loss was computed with.  By default ``after`` unchanged."""
        del model, before, x, keys, step
        return after

    def init_auxiliary(self, key: jax.Array, model: Any, variables: Any) -> Any:
        """The initial auxiliary parameters (a pytree), with ``has_auxiliary``."""
        raise NotImplementedError(f"{type(self).__name__} has no auxiliary parameters")

    def auxiliary_optimizer(self) -> optax.GradientTransformation:
        """The optimizer of the auxiliary parameters, with ``has_auxiliary``."""
        raise NotImplementedError(f"{type(self).__name__} has no auxiliary parameters")

    def auxiliary_loss(self, auxiliary: Any, model: Any, variables: Any, x: jax.Array, keys: jax.Array,
                       step: jax.Array | int = 0) -> tuple[jax.Array, Terms]:
        """``(loss [], terms {str: []})``: the loss the auxiliary parameters minimise, with the
        model's ``variables`` gradient-stopped, with ``has_auxiliary``."""
        raise NotImplementedError(f"{type(self).__name__} has no auxiliary parameters")
