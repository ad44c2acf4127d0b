"""The ``exact`` estimator of ``vaegen evaluate``: log p(x) and the ELBO summed over every
configuration of a discrete z (:mod:`vaegen.estimators.enumeration`).

It reports ``log_px_exact`` and ``elbo_exact`` (with ``reconstruction_exact`` and ``kl_exact``),
each labelled ``exact``, beside the importance-sampled ``log_px`` (a stochastic lower bound): on
a latent space small enough to enumerate, the gap between the two is the importance sampler's
own error.  For a continuous z, or more configurations than
:data:`vaegen.estimators.enumeration.MAX_CONFIGURATIONS`, it lists ``log_px_exact`` under
*undefined* with the reason.
"""

from __future__ import annotations

import jax

from vaegen.estimators import enumeration as enumeration_lib
from vaegen.registry import ESTIMATORS, NoSettings
from vaegen.runs.evaluate import NO_PRIOR, EstimatorContext


@ESTIMATORS.register("exact", traits={"order": 2.5, "stream": 5, "reports": "exact"})
def _exact(settings: NoSettings, ctx: EstimatorContext) -> None:
    """log p(x) and the ELBO summed over every configuration of a discrete z (small latent spaces)."""
    run = ctx.run
    if not run.has_prior or run.is_autoencoder:
        ctx.undefined["log_px_exact"] = NO_PRIOR
        return
    n = enumeration_lib.support_size(run.model, run.variables)
    if n is None or n > enumeration_lib.MAX_CONFIGURATIONS:
        ctx.undefined["log_px_exact"] = (enumeration_lib.CONTINUOUS if n is None else
                                         enumeration_lib.too_many(n, enumeration_lib.MAX_CONFIGURATIONS))
        return
    fns = enumeration_lib.enumeration_functions(run.model, run.variables)
    est = jax.device_get(ctx.timed("exact", lambda: enumeration_lib.exact_log_px(*fns, ctx.xs, **ctx.kw)))
    label = f"exact: the sum over all {n} configurations of z"
    for name in ("log_px", "elbo", "reconstruction"):
        ctx.record(f"{name}_exact", est[name], ctx.num_dims, estimator=label, kind="exact")
    ctx.record("kl_exact", est["kl"], None, estimator="exact: closed form", kind="exact")
