"""The regularised autoencoder (RAE) of Ghosh et al. (2020), "From variational to deterministic
autoencoders".

An RAE is the autoencoder (q(z|x) = delta(z - f(x)), no p(z)) trained with two regularisers that
keep its code space smooth and bounded, so that a density fitted to the codes *after* training
(:mod:`vaegen.expost`) makes it a generative model:

    objective(x) = log p(x | z = f(x)) - (lambda / 2) ||f(x)||^2 - (gamma / 2) ||theta_dec||^2

* ``lambda`` (``objective.code_penalty``): the penalty on the codes.  It is what is left of the
  KL of a VAE whose encoder variance is fixed and shrunk to 0: for q(z|x) = N(f(x), s^2 I) and
  p(z) = N(0, I), KL = ||f(x)||^2 / 2 + D (s^2 - 1 - 2 log s) / 2, whose only parameter-dependent
  part is ||f(x)||^2 / 2 (lambda = beta).
* ``gamma`` (``objective.decoder_l2``): L2 on the decoder's weights (the "RAE-L2" variant),
  which bounds how fast p(x | z) may change with z.  Biases and likelihood scales are not
  penalised.

Neither term makes the objective a bound on any log p(x): there is still no p(z) during training.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vaegen.model.latent import LatentVariableModel


def decoder_weight_norm_sq(variables: Any) -> jax.Array:
    """||theta_dec||^2: the sum of squares of every ``kernel`` of p(x | z)'s network (trunk and
    head), ``[]``."""
    leaves = jax.tree_util.tree_flatten_with_path(variables["params"]["likelihood"])[0]
    total = jnp.zeros((), jnp.float32)
    for path, leaf in leaves:
        if getattr(path[-1], "key", None) == "kernel":
            total = total + jnp.sum(jnp.square(leaf))
    return total


@dataclasses.dataclass(frozen=True)
class RegularizedAutoencoder:
    """RAE-L2: ``log p(x | z = f(x)) - lambda/2 ||f(x)||^2 - gamma/2 ||theta_dec||^2`` per example.

    Attributes:
      code_penalty: lambda.
      decoder_l2: gamma.

    Terms (nats, one example): ``reconstruction`` log p(x | z = f(x)), ``code_norm_sq``
    ||f(x)||^2, ``decoder_norm_sq`` ||theta_dec||^2 (the same for every example), ``objective``.
    """

    code_penalty: float = 1.0
    decoder_l2: float = 1e-3
    bound_name = "reconstruction"

    def __call__(self, model: LatentVariableModel, variables: Any, x: jax.Array, key: jax.Array,
                 step: jax.Array | int = 0) -> dict[str, jax.Array]:
        del key, step

        def terms(m: LatentVariableModel) -> dict[str, jax.Array]:
            z = m.q_z_given_x(x).mean()                            # f(x)   [D]
            return {"reconstruction": m.log_likelihood(x, z), "code_norm_sq": jnp.sum(z**2)}

        out = model.apply(variables, method=terms)
        out["decoder_norm_sq"] = decoder_weight_norm_sq(variables)
        out["objective"] = (out["reconstruction"] - 0.5 * self.code_penalty * out["code_norm_sq"]
                            - 0.5 * self.decoder_l2 * out["decoder_norm_sq"])
        return out


def build_objective(cfg: Any) -> RegularizedAutoencoder:
    """From ``config.objective`` (``code_penalty``, ``decoder_l2``)."""
    return RegularizedAutoencoder(code_penalty=float(cfg.code_penalty), decoder_l2=float(cfg.decoder_l2))
