"""Autoencoders made generative during training by matching the aggregate distribution of their
codes, q(z) = E_x[delta(z - f(x))], to a prior p(z).

A plain AE has a decoder p(x | z) but no p(z); its codes fill whatever region of the latent space
suits the reconstruction.  These objectives keep the AE's point-mass posterior and add a penalty
that pulls q(z) towards p(z), which is then part of the model: the run samples z ~ p(z), and its
log p(x) is estimated like that of an AE with p(z) attached (importance sampling with a proposal
centred on the code, :mod:`vaegen.studies.expost`).

``wae``  Wasserstein AE with an MMD penalty (Tolstikhin et al. 2018)::

    objective = log p(x | z = f(x))  -  lambda * MMD^2(q(z), p(z))

  with the unbiased estimate of MMD^2 between the batch's codes and as many draws of p(z)
  (:func:`mmd_unbiased`).  The reconstruction cost c(x, y) of the paper is -log p(x | z) here,
  so every model of the study is trained on the same likelihood.

``aae``  adversarial AE (Makhzani et al. 2016): a discriminator D(z) (an MLP with its own
  parameters and optimizer, :mod:`vaegen.objectives.batch`) learns to tell draws of p(z) from
  codes, and the encoder is trained to fool it::

    objective = log p(x | z = f(x))  +  lambda * log sigmoid(D(f(x)))        (non-saturating)
    discriminator loss = -mean log sigmoid(D(z_p)) - mean log(1 - sigmoid(D(f(x))))

Neither objective is a bound on log p(x): the penalty is a distance between distributions of
codes, not a KL of a variational posterior.  All terms are in nats per example except the MMD
(kernel units) and the discriminator's loss (nats per pair of draws).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vaegen.blocks.networks import MLP, MLPSettings
from vaegen.errors import ConfigError
from vaegen.objectives.autoencoder import Autoencoder, needs_point_mass
from vaegen.objectives.base import Objective
from vaegen.objectives.batch import Terms, batched
from vaegen.registry import OBJECTIVES, Settings, setting
from vaegen.spec.run import RunSpec

DEFAULT_KERNEL_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""The scales s of the kernels summed in the MMD, as multiples of 2 D sigma^2 (Tolstikhin et al. 2018)."""


# --- the MMD -------------------------------------------------------------------------------------

def kernel_matrix(a: jax.Array, b: jax.Array, *, kernel: str = "imq", scales: Sequence[float] = DEFAULT_KERNEL_SCALES,
                  prior_variance: float = 1.0) -> jax.Array:
    """k(a_i, b_j) for ``a [N, D]``, ``b [M, D]`` -> ``[N, M]``, summed over the scales s, with
    C = s * 2 D sigma^2 (sigma^2 the prior's variance per dimension):

    - ``imq`` (inverse multiquadratic): k = C / (C + ||a - b||^2)
    - ``rbf`` (Gaussian): k = exp(-||a - b||^2 / C)
    """
    d = a.shape[-1]
    sq = jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2.0 * a @ b.T   # ||a_i - b_j||^2 [N, M]
    sq = jnp.maximum(sq, 0.0)
    out = jnp.zeros_like(sq)
    for s in scales:
        c = float(s) * 2.0 * d * prior_variance
        out = out + (c / (c + sq) if kernel == "imq" else jnp.exp(-sq / c))
    return out


def mmd_unbiased(x: jax.Array, y: jax.Array, **kernel_args: Any) -> jax.Array:
    """The unbiased estimate of MMD^2 between the distributions of ``x [N, D]`` and ``y [M, D]``
    (Gretton et al. 2012, the U-statistic), ``[]``:

        1/(N(N-1)) sum_{i != j} k(x_i, x_j) + 1/(M(M-1)) sum_{i != j} k(y_i, y_j)
        - 2/(N M) sum_{i, j} k(x_i, y_j)

    Its expectation is MMD^2 exactly; it can be negative when the two are close.  N, M >= 2.
    """
    n, m = x.shape[0], y.shape[0]
    kxx = kernel_matrix(x, x, **kernel_args)
    kyy = kernel_matrix(y, y, **kernel_args)
    kxy = kernel_matrix(x, y, **kernel_args)
    within_x = (jnp.sum(kxx) - jnp.sum(jnp.diag(kxx))) / (n * (n - 1))
    within_y = (jnp.sum(kyy) - jnp.sum(jnp.diag(kyy))) / (m * (m - 1))
    return within_x + within_y - 2.0 * jnp.mean(kxy)


def prior_draws(model: Any, variables: Any, key: jax.Array, n: int) -> jax.Array:
    """``n`` draws z ~ p(z), ``[n, D]``."""
    return model.apply(variables, method=lambda m: m.p_z().sample(seed=key, sample_shape=(n,)))


def _codes(model: Any, variables: Any, x: jax.Array) -> jax.Array:
    """The point-mass codes f(x) of a batch ``x [B, *event]``: ``[B, D]``."""
    return model.apply(variables, method=lambda m: m.q_z_given_x(x).mean())


def _batch_key(keys: jax.Array) -> jax.Array:
    """One key for a batch-level draw, from the batch's per-example keys (distinct from theirs)."""
    return jax.random.fold_in(keys[0], 0x6D6D64)


# --- settings: what a config's objective section holds, and what each objective reads ----------------

@dataclasses.dataclass(frozen=True)
class WAESettings(Settings):
    mmd_weight: float = setting(100.0, "lambda: the weight of MMD^2(codes, p(z)) against log p(x | f(x)) (hundreds of "
                                "nats per image)", ge=0)
    kernel: str = setting("imq", "imq (inverse multiquadratic, C / (C + ||a - b||^2)) | rbf (exp(-||a - b||^2 / C))",
                          choices=("imq", "rbf"))
    kernel_scales: tuple[float, ...] = setting(DEFAULT_KERNEL_SCALES, "the kernels summed: C = s * 2 D * "
                                               "prior_variance for each s", items_gt=0, nonempty=True)
    prior_variance: float = setting(1.0, "sigma^2 of p(z) per dimension in the kernels' scale", gt=0)


@dataclasses.dataclass(frozen=True)
class AAESettings(Settings):
    adversarial_weight: float = setting(10.0, "lambda: the weight of the encoder's log sigmoid(D(f(x))) (against a "
                                        "log p(x | f(x)) of hundreds of nats per image)", ge=0)
    discriminator_hidden: tuple[int, ...] = setting((256, 256), "widths of the discriminator's hidden layers (ReLU)",
                                                    items_gt=0, nonempty=True)
    discriminator_learning_rate: float = setting(1e-4, "the discriminator's Adam learning rate (constant)", gt=0)
    discriminator_b1: float = setting(0.5, "the discriminator's Adam first-moment decay", ge=0, lt=1)


# --- WAE-MMD -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class WAE(Objective):
    """``log p(x | z = f(x)) - lambda MMD^2(codes, z ~ p(z))`` on a batch (see the module).

    Attributes:
      settings: :class:`WAESettings`: lambda = ``mmd_weight``, the ``kernel``, its
        ``kernel_scales`` and ``prior_variance`` (:func:`kernel_matrix`).

    Terms (each ``[B]``): ``reconstruction`` log p(x | z = f(x)) (nats), ``mmd`` the batch's
    unbiased MMD^2 estimate (the same for every example), ``objective``.
    """

    settings: WAESettings = WAESettings()
    bound_name = "reconstruction"

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        """The per-example part, log p(x | z = f(x)) (the MMD is a term of a batch)."""
        return Autoencoder()(model, variables, x, key, step)

    def mmd(self, codes: jax.Array, z_prior: jax.Array) -> jax.Array:
        s = self.settings
        return mmd_unbiased(codes, z_prior, kernel=s.kernel, scales=tuple(s.kernel_scales), prior_variance=s.prior_variance)

    def batch_terms(self, model: Any, variables: Any, x: jax.Array, keys: jax.Array, step: Any = 0,
                    auxiliary: Any = None) -> Terms:
        del auxiliary
        terms = batched(self, model, variables, x, keys, step)
        codes = _codes(model, variables, x)                                  # [B, D]
        z = prior_draws(model, variables, _batch_key(keys), codes.shape[0])  # [B, D]
        mmd = self.mmd(codes, z)
        b = x.shape[0]
        terms["mmd"] = jnp.broadcast_to(mmd, (b,))
        terms["objective"] = terms["reconstruction"] - self.settings.mmd_weight * mmd
        return terms

    def for_validation(self, validation_num_samples: int) -> Autoencoder:
        """log p(x | z = f(x)) on held-out data."""
        del validation_num_samples
        return Autoencoder()


# --- the adversarial AE -------------------------------------------------------------------------------

class Discriminator(nn.Module):
    """D(z): a ReLU MLP on the code with one logit out, ``[..., D] -> [...]`` (p(z) vs q(z)); ``hidden``:
    the widths of its hidden layers (the AAE's ``discriminator_hidden``)."""

    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = MLP(MLPSettings(hidden=tuple(self.hidden), activation="relu"), name="trunk")(z)
        return nn.Dense(1, name="logit")(h)[..., 0]


@dataclasses.dataclass(frozen=True)
class AAE(Objective):
    """The adversarial autoencoder (see the module): the encoder maximises
    ``log p(x | f(x)) + lambda log sigmoid(D(f(x)))``, the discriminator D (the objective's own
    parameters, trained by its own Adam) minimises its cross-entropy between draws of p(z)
    (label 1) and codes (label 0).

    Terms: ``reconstruction``, ``adversarial`` log sigmoid(D(f(x))) (nats), ``objective``, each
    ``[B]``; the discriminator's (scalars, as ``discriminator/...``): ``loss``, ``accuracy`` on
    the batch's codes and as many prior draws, ``prior_prob`` mean sigmoid(D(z_p)) and
    ``code_prob`` mean sigmoid(D(f(x))) (both 0.5 when it cannot tell them apart).

    Attributes:
      settings: :class:`AAESettings`: lambda = ``adversarial_weight``; the discriminator's
        hidden widths and its Adam's learning rate and b1.
    """

    settings: AAESettings = AAESettings()
    bound_name = "reconstruction"
    has_auxiliary = True
    auxiliary_name = "discriminator"

    @property
    def discriminator(self) -> Discriminator:
        return Discriminator(hidden=tuple(self.settings.discriminator_hidden))

    def __call__(self, model: Any, variables: Any, x: jax.Array, key: jax.Array, step: jax.Array | int = 0) -> Terms:
        """The per-example reconstruction (the adversarial term needs the discriminator)."""
        return Autoencoder()(model, variables, x, key, step)

    def batch_terms(self, model: Any, variables: Any, x: jax.Array, keys: jax.Array, step: Any = 0,
                    auxiliary: Any = None) -> Terms:
        terms = batched(self, model, variables, x, keys, step)
        logits = self.discriminator.apply(auxiliary, _codes(model, variables, x))    # [B]
        terms["adversarial"] = jax.nn.log_sigmoid(logits)
        terms["objective"] = terms["reconstruction"] + self.settings.adversarial_weight * terms["adversarial"]
        return terms

    def init_auxiliary(self, key: jax.Array, model: Any, variables: Any) -> Any:
        z = prior_draws(model, variables, key, 1)
        return self.discriminator.init(jax.random.fold_in(key, 1), z)

    def auxiliary_optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.settings.discriminator_learning_rate, b1=self.settings.discriminator_b1)

    def auxiliary_loss(self, auxiliary: Any, model: Any, variables: Any, x: jax.Array, keys: jax.Array,
                       step: Any = 0) -> tuple[jax.Array, Terms]:
        codes = _codes(model, variables, x)                                   # [B, D]
        z = prior_draws(model, variables, _batch_key(keys), codes.shape[0])   # [B, D]
        real, fake = self.discriminator.apply(auxiliary, z), self.discriminator.apply(auxiliary, codes)
        loss = -jnp.mean(jax.nn.log_sigmoid(real)) - jnp.mean(jax.nn.log_sigmoid(-fake))
        accuracy = 0.5 * (jnp.mean(real > 0) + jnp.mean(fake < 0))
        return loss, {"accuracy": accuracy, "prior_prob": jnp.mean(jax.nn.sigmoid(real)),
                      "code_prob": jnp.mean(jax.nn.sigmoid(fake))}

    def for_validation(self, validation_num_samples: int) -> Autoencoder:
        del validation_num_samples
        return Autoencoder()


# --- registered objectives -------------------------------------------------------------------------

def needs_point_mass_and_prior(settings: Settings, spec: RunSpec) -> None:
    """Matching the codes to p(z) needs a deterministic encoder and a prior to match."""
    needs_point_mass(settings, spec)
    name = spec.objective.name
    if not spec.model.prior.trait("exists"):
        raise ConfigError(f"objective {name!r} matches the codes to a prior p(z), and config.model.prior is none: "
                          "set --config.model.prior=standard_normal")


@OBJECTIVES.register("wae", settings=WAESettings, check=needs_point_mass_and_prior, traits={"matches_prior": True})
def wae(settings: WAESettings, *, steps_per_epoch: int = 1) -> WAE:
    """log p(x | z = f(x)) - lambda MMD^2(q(z), p(z)): the Wasserstein AE with an MMD penalty (Tolstikhin et al. 2018)."""
    del steps_per_epoch
    return WAE(settings)


@OBJECTIVES.register("aae", settings=AAESettings, check=needs_point_mass_and_prior, traits={"matches_prior": True})
def aae(settings: AAESettings, *, steps_per_epoch: int = 1) -> AAE:
    """log p(x | z = f(x)) + lambda log D(f(x)), D a discriminator of codes vs p(z) with its own optimizer (Makhzani et al. 2016)."""
    del steps_per_epoch
    return AAE(settings)


