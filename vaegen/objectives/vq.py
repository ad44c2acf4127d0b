"""The VQ-VAE's objective (van den Oord et al. 2017), on a :class:`vaegen.model.vq.VQVAE`::

    objective(x) = log p(x | z = e_{c*})  -  ||sg(z_e) - e_{c*}||^2  -  beta ||z_e - sg(e_{c*})||^2

with the straight-through z = z_e + sg(e_{c*} - z_e) fed to the decoder (its gradient reaches the
encoder unchanged), the *codebook* term moving the chosen codes towards the encoder outputs (left
out when the codebook is a moving average: ``model.kind.ema``, updated by :meth:`VQ.after_step`), and
the *commitment* term (beta = ``commitment``) keeping the encoder near its codes.  Squared norms are
summed over the D = M d coordinates of one example.

Terms (per example, ``[B]``): ``reconstruction`` log p(x | c*) (nats), ``codebook_loss``,
``commitment_loss`` (squared distances, not nats), ``elbo_uniform`` = log p(x | c*) - M log K (nats:
the ELBO of the VQ-VAE under a uniform prior over the K^M codes, whose KL to the point mass
q(c | x) is M log K -- a true lower bound on that model's log p(x)), ``objective``; per batch (the
same for every example): ``perplexity`` exp(entropy) of the batch's code usage (1 .. K) and
``used_codes`` (codes chosen at least once in the batch).

``after_step`` keeps the codebook's moving averages and restarts unused codes
(:mod:`vaegen.blocks.quantizers`); it is deterministic given the batch and the step's keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vaegen.blocks import quantizers as quantizers_lib
from vaegen.objectives.base import Objective
from vaegen.objectives.batch import Terms
from vaegen.registry import OBJECTIVES, Settings, setting


def vq_terms(model: Any, variables: Any, x: jax.Array, commitment: float) -> tuple[Terms, jax.Array]:
    """The terms of the module docstring for ``x [..., *event]`` (any leading shape), and the codes
    c* ``[..., M]``."""

    def f(m):
        q = m.quantize(x)
        return q, m.log_likelihood(x, q["z"])

    q, reconstruction = model.apply(variables, method=f)
    sg = jax.lax.stop_gradient
    codebook = jnp.sum((sg(q["z_e"]) - q["z_q"]) ** 2, -1)
    commit = jnp.sum((q["z_e"] - sg(q["z_q"])) ** 2, -1)
    posterior = model.posterior
    objective = reconstruction - commitment * commit
    if not posterior.ema:
        objective = objective - codebook
    kl = quantizers_lib.uniform_code_kl(posterior.codebook_size, posterior.num_groups)
    terms = {"reconstruction": reconstruction, "codebook_loss": codebook, "commitment_loss": commit,
             "elbo_uniform": reconstruction - kl, "objective": objective}
    return terms, q["indices"]


@dataclasses.dataclass(frozen=True)
class VQObjectiveSettings(Settings):
    commitment: float = setting(0.25, "beta of the commitment term beta ||z_e - sg(e_c)||^2", ge=0)


@dataclasses.dataclass(frozen=True)
class VQ(Objective):
    """The ``vq`` objective (see the module): per example by ``__call__`` (validation), per batch by
    ``batch_terms`` (training: adds the code usage), and the codebook's update by ``after_step``.
    ``settings``: :class:`VQObjectiveSettings` (beta = ``commitment``)."""

    settings: VQObjectiveSettings = VQObjectiveSettings()
    bound_name = "reconstruction"

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        del key, step
        return vq_terms(model, variables, x, self.settings.commitment)[0]

    def batch_terms(self, model: Any, variables: Any, x: jax.Array, keys: jax.Array, step: Any = 0,
                    auxiliary: Any = None) -> Terms:
        del keys, step, auxiliary
        terms, indices = vq_terms(model, variables, x, self.settings.commitment)  # [B], [B, M]
        perplexity, used = quantizers_lib.perplexity(indices, model.posterior.codebook_size)
        b = x.shape[0]
        terms["perplexity"] = jnp.broadcast_to(perplexity, (b,))
        terms["used_codes"] = jnp.broadcast_to(used, (b,))
        return terms

    def after_step(self, model: Any, before: Any, after: Any, x: jax.Array, keys: jax.Array, step: Any = 0) -> Any:
        """The codebook's moving averages from this step's encoder outputs and codes (computed with
        ``before``, the variables of the step's loss), then the restarts of unused codes."""
        del step
        return codebook_update(model, before, after, x, jax.random.fold_in(keys[0], 0x7651))

    def for_validation(self, validation_num_samples: int) -> "VQ":
        """The same terms on held-out data; the tracked one is ``reconstruction`` log p(x | c*)."""
        del validation_num_samples
        return self


def codebook_update(model: Any, before: Any, after: Any, x: jax.Array, key: jax.Array) -> Any:
    """``after`` with its ``codebook`` collection (and, without EMA, its codebook parameter) updated
    from the batch ``x [B, *event]`` encoded with ``before`` (see :mod:`vaegen.blocks.quantizers`)."""
    posterior = model.posterior
    s = posterior.settings
    d = posterior.code_dim
    q = model.apply(before, method=lambda m: m.quantize(x))
    z = jax.lax.stop_gradient(q["z_e"]).reshape(-1, d)                      # [B M, d]
    indices = q["indices"].reshape(-1)                                       # [B M]
    stats = dict(after[quantizers_lib.CODEBOOK]["posterior"])
    params = after["params"]
    if posterior.ema:
        stats.update(quantizers_lib.ema_update(stats, z, indices, decay=float(s.ema_decay),
                                               epsilon=float(s.ema_epsilon)))
    else:
        stats["cluster_size"] = quantizers_lib.usage_update(stats["cluster_size"], indices, decay=float(s.ema_decay))
    threshold = float(s.dead_code_threshold)
    if threshold > 0:
        codebook = stats["embedding"] if posterior.ema else params["posterior"]["embedding"]
        dead, stats["cluster_size"], codebook = quantizers_lib.restart_dead_codes(
            key, stats["cluster_size"], codebook, z, threshold)
        if posterior.ema:
            stats["embedding"] = codebook
            stats["embedding_sum"] = jnp.where(dead[:, None], threshold * codebook, stats["embedding_sum"])
        else:
            params = {**params, "posterior": {**params["posterior"], "embedding": codebook}}
    codebook_collection = {**after[quantizers_lib.CODEBOOK], "posterior": stats}
    return {**after, "params": params, quantizers_lib.CODEBOOK: codebook_collection}


# --- registered objective ----------------------------------------------------------------------------

@OBJECTIVES.register("vq", settings=VQObjectiveSettings, traits={"training": "codes"})
def vq(settings: VQObjectiveSettings, *, steps_per_epoch: int = 1) -> VQ:
    """log p(x | e_c*) - ||sg(z_e) - e_c*||^2 - beta ||z_e - sg(e_c*)||^2: the VQ-VAE's (van den Oord et al. 2017)."""
    del steps_per_epoch
    return VQ(settings)
