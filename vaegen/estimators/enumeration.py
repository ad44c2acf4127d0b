"""Exact log p(x) and the exact ELBO of a model with a small discrete latent space, by enumeration.

For z with N = K^M (or 2^D) configurations (:mod:`vaegen.blocks.discrete`),

    log p(x) = log sum_z p(z) p(x | z)                                   (exact)
    ELBO(x)  = sum_z q(z | x) [log p(x, z) - log q(z | x)]                (exact)

are finite sums.  :func:`exact_log_px` computes both for every example: configurations are
generated on the device from their indices in chunks of ``chunk_size`` (a running logsumexp, so
memory does not grow with N), examples are batched and sharded over the devices like every other
estimator (:func:`vaegen.sharding.map_examples`).  The work is N decoder passes per example, so
it is refused above ``max_configurations`` (default :data:`MAX_CONFIGURATIONS`).

The model is given, as for importance sampling (:mod:`vaegen.estimators.importance`), by its
``log_joint(x, z)``, its ``posterior(x)`` (q(z | x)) and its ``prior(x)`` (p(z), ignoring x):
:func:`enumeration_functions` gives them for a model and its variables.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vaegen import sharding as sharding_lib
from vaegen.blocks import discrete as discrete_lib
from vaegen.errors import UndefinedEstimateError
from vaegen.estimators import importance as importance_lib

MAX_CONFIGURATIONS = 2**20
"""The most configurations of z :func:`exact_log_px` sums per example by default (a million decoder passes)."""

CONTINUOUS = "undefined: z is continuous; log p(x) is a sum over z only for a discrete z with few configurations"


def too_many(n: int, max_configurations: int) -> str:
    """Why log p(x) is not enumerated for a latent space of ``n`` configurations."""
    return (f"undefined: z has {discrete_lib.size_text(n)} configurations, more than the "
            f"{discrete_lib.size_text(max_configurations)} enumerated (use importance sampling)")


def enumeration_functions(model: Any, variables: Any = None) -> tuple[Any, Any, Any]:
    """``(log_joint, posterior, prior)`` of a model and its variables (or of a trained run), as
    ``jax.tree_util.Partial`` pytrees (see :func:`vaegen.estimators.importance.model_functions`)."""
    log_joint, posterior = importance_lib.model_functions(model, variables, proposal="posterior")
    _, prior = importance_lib.model_functions(model, variables, proposal="prior")
    return log_joint, posterior, prior


def support_size(model: Any, variables: Any = None) -> int | None:
    """The number of configurations of the model's z, or None for a continuous z."""
    model, variables = importance_lib.model_and_variables(model, variables)
    dist = model.apply(variables, method="p_z")
    return dist.support_size if discrete_lib.is_discrete(dist) else None


@dataclasses.dataclass(frozen=True)
class _Enumerate:
    """Per-example exact terms (see :func:`exact_log_px`)."""

    chunk_size: int

    def __call__(self, fns, x, key):
        del key
        log_joint, posterior, prior = fns
        return enumerate_one(log_joint, posterior(x), prior(x), x, chunk_size=self.chunk_size)


def enumerate_one(log_joint: Any, q: Any, p: Any, x: jax.Array, *, chunk_size: int = 256) -> dict[str, jax.Array]:
    """The exact terms of one example ``x [*event]``: ``log_px`` = log sum_z p(x, z), ``elbo`` =
    sum_z q(z) [log p(x, z) - log q(z)], ``kl`` = KL(q || p) (closed form) and ``reconstruction``
    = elbo + kl = E_q[log p(x | z)], each ``[]`` nats.  ``q`` and ``p`` are distributions over the
    same discrete z (:class:`vaegen.blocks.discrete.DiscreteLatents`); traceable and vmappable."""
    if not (discrete_lib.is_discrete(p) and discrete_lib.is_discrete(q)):
        raise UndefinedEstimateError(CONTINUOUS.removeprefix("undefined: "))
    n = int(p.support_size)
    c = max(1, min(int(chunk_size), n))
    neg_inf = jnp.asarray(-jnp.inf, jnp.float32)

    def chunk(carry, i):
        lse, elbo = carry
        index = i * c + jnp.arange(c, dtype=jnp.int32)                            # [C]
        valid = index < n
        z = p.configurations(jnp.minimum(index, n - 1))                            # [C, D]
        lj = log_joint(x, z)                                                       # log p(x, z)   [C]
        log_q = q.log_prob(z)                                                      # [C]
        lse = jnp.logaddexp(lse, jax.nn.logsumexp(jnp.where(valid, lj, -jnp.inf)))
        elbo = elbo + jnp.sum(jnp.where(valid, jnp.exp(log_q) * (lj - log_q), 0.0))
        return (lse, elbo), None

    (log_px, elbo), _ = jax.lax.scan(chunk, (neg_inf, jnp.zeros((), jnp.float32)),
                                     jnp.arange(-(-n // c), dtype=jnp.int32))
    kl = q.kl_divergence(p)
    return {"log_px": log_px, "elbo": elbo, "kl": kl, "reconstruction": elbo + kl}


def exact_log_px(log_joint: Any, posterior: Any, prior: Any, xs: jax.Array, *, chunk_size: int = 256,
                 max_configurations: int = MAX_CONFIGURATIONS, batch_size: int | None = None, devices=None,
                 progress: bool = False) -> dict[str, jax.Array]:
    """Exact log p(x) and ELBO for every example of ``xs [N, *event]`` by enumerating z.

    Args:
      log_joint: ``log_joint(x, z) -> [C]`` nats (:func:`enumeration_functions` gives the model's three).
      posterior: ``posterior(x)`` -> q(z | x), a :class:`vaegen.blocks.discrete.DiscreteLatents`.
      prior: ``prior(x)`` -> p(z), the same kind of distribution (x ignored).
      xs: ``[N, *event]`` observations as the model sees them.
      chunk_size: configurations summed at once per example (memory only).
      max_configurations: refuse latent spaces larger than this.
      batch_size: examples vmapped together per device (memory only).
    Returns:
      ``[N]`` arrays, nats, all exact: ``log_px``, ``elbo``, ``reconstruction``, ``kl``.
    Raises:
      UndefinedEstimateError: z is continuous, or has more than ``max_configurations`` configurations.
    """
    xs = jnp.asarray(xs)
    p = prior(xs[0])
    if not discrete_lib.is_discrete(p):
        raise UndefinedEstimateError(CONTINUOUS.removeprefix("undefined: "))
    n = int(p.support_size)
    if n > max_configurations:
        raise UndefinedEstimateError(too_many(n, max_configurations).removeprefix("undefined: "))
    c = max(1, min(int(chunk_size), n))
    b = int(batch_size or max(1, sharding_lib.default_rows() // c))
    fn = jax.tree_util.Partial(_Enumerate(c), (log_joint, posterior, prior))
    return sharding_lib.map_examples(fn, xs, jax.random.key(0), batch_size=b, devices=devices, progress=progress,
                                     desc=f"sum over {n} z")
