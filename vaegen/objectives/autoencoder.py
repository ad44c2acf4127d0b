"""The autoencoder's objective: what is left of the ELBO for q(z|x) = delta(z - f(x)).

    objective(x) = log p(x | z = f(x)) - (lambda / 2) ||f(x)||^2 - (gamma / 2) ||theta_dec||^2

With lambda = gamma = 0 (``ae``) this is the plain autoencoder.  With both (``rae``) it is the
regularised autoencoder of Ghosh et al. (2020), "From variational to deterministic
autoencoders", whose penalties keep the code space smooth and bounded, so that a density fitted
to the codes *after* training (:mod:`vaegen.studies.expost`) makes it a generative model:

* lambda (``code_penalty``) is what is left of the KL of a VAE whose encoder variance is fixed
  and shrunk to 0: for q(z|x) = N(f(x), s^2 I) and p(z) = N(0, I),
  KL = ||f(x)||^2 / 2 + D (s^2 - 1 - 2 log s) / 2, whose only parameter-dependent part is
  ||f(x)||^2 / 2 (lambda = beta).
* gamma (``decoder_l2``) is an L2 penalty on the decoder's weights (the "RAE-L2" variant), which
  bounds how fast p(x | z) may change with z.  Biases and likelihood scales are not penalised.

Neither term makes the objective a bound on any log p(x): there is no p(z) during training.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vaegen.errors import ConfigError
from vaegen.objectives.base import Objective
from vaegen.registry import OBJECTIVES, Settings, setting
from vaegen.spec.run import RunSpec


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
class AutoencoderSettings(Settings):
    code_penalty: float = setting(0.0, "lambda in - lambda/2 ||f(x)||^2 (the RAE's penalty on the codes)", ge=0)
    decoder_l2: float = setting(0.0, "gamma in - gamma/2 ||theta_dec||^2 (RAE-L2, Ghosh et al. 2020)", ge=0)


@dataclasses.dataclass(frozen=True)
class RegularizedAutoencoderSettings(AutoencoderSettings):
    code_penalty: float = setting(1.0, "lambda in - lambda/2 ||f(x)||^2 (the penalty on the codes)", ge=0)
    decoder_l2: float = setting(1e-3, "gamma in - gamma/2 ||theta_dec||^2 (L2 on the decoder's weights)", ge=0)


@dataclasses.dataclass(frozen=True)
class Autoencoder(Objective):
    """``log p(x | z = f(x)) - lambda/2 ||f(x)||^2 - gamma/2 ||theta_dec||^2`` per example.

    This is not a bound on any log p(x): there is no p(z).

    Attributes:
      settings: :class:`AutoencoderSettings` (``ae``; ``rae``: :class:`RegularizedAutoencoderSettings`):
        lambda = ``code_penalty`` and gamma = ``decoder_l2`` (0: none).

    Terms (nats, one example): ``reconstruction`` log p(x | z = f(x)), ``code_norm_sq``
    ||f(x)||^2, with ``decoder_l2 > 0`` also ``decoder_norm_sq`` ||theta_dec||^2 (the same for
    every example), and ``objective``.
    """

    settings: AutoencoderSettings = AutoencoderSettings()
    bound_name = "reconstruction"

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array,
                 step: jax.Array | int = 0) -> dict[str, jax.Array]:
        del key, step

        def terms(m: Any) -> dict[str, jax.Array]:
            z = m.q_z_given_x(x).mean()                            # f(x)   [D]
            return {"reconstruction": m.log_likelihood(x, z), "code_norm_sq": jnp.sum(z**2)}

        out = model.apply(variables, method=terms)
        s = self.settings
        out["objective"] = out["reconstruction"] - 0.5 * s.code_penalty * out["code_norm_sq"]
        if s.decoder_l2 > 0:
            out["decoder_norm_sq"] = decoder_weight_norm_sq(variables)
            out["objective"] = out["objective"] - 0.5 * s.decoder_l2 * out["decoder_norm_sq"]
        return out

    def for_validation(self, validation_num_samples: int) -> "Autoencoder":
        """log p(x | z = f(x)) without the penalties."""
        del validation_num_samples
        return Autoencoder()


# --- registered objectives -------------------------------------------------------------------------

def needs_point_mass(settings: Settings, spec: RunSpec) -> None:
    """The autoencoders' objectives need a deterministic encoder."""
    name = spec.objective.name
    if not spec.inference.posterior.trait("deterministic"):
        if name == "ae":
            raise ConfigError("objective 'ae' (log p(x | z = f(x))) needs a deterministic encoder: "
                              "set --config.inference.posterior=point_mass")
        raise ConfigError(f"objective {name!r} trains an autoencoder and needs a deterministic encoder: "
                          "set --config.inference.posterior=point_mass")


def _autoencoder(settings: AutoencoderSettings, *, steps_per_epoch: int = 1) -> Autoencoder:
    del steps_per_epoch
    return Autoencoder(settings)


OBJECTIVES.register("ae", settings=AutoencoderSettings, check=needs_point_mass,
                    summary="log p(x | z = f(x)) [- lambda/2 ||f(x)||^2 - gamma/2 ||theta_dec||^2]: the autoencoder "
                            "(q a point mass, no p(z))")(_autoencoder)
OBJECTIVES.register("rae", settings=RegularizedAutoencoderSettings, check=needs_point_mass,
                    summary="the regularised autoencoder (Ghosh et al. 2020): ae with its penalties on the codes and "
                            "the decoder's weights on by default")(_autoencoder)
