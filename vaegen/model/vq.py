"""The VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017): a discrete code c in {0..K-1}^M.

    c ~ p(c)                   a prior over the K^M codes: none in training; fitted afterwards
    z = e_c = [e_{c_1}, ..., e_{c_M}]   [D = M d]   the codes' codebook vectors
    x ~ p(x | z)               the decoder, as in every other model

with q(c | x) a point mass on the nearest codes c*(x) of the encoder's output
(:class:`vaegen.blocks.quantizers.VectorQuantizer`).  In training there is no p(c) (the model kind's
prior is ``none``): the ``vq`` objective (:mod:`vaegen.objectives.vq`) is the reconstruction with the
codebook and commitment terms.  Under a uniform p(c) the ELBO would be log p(x | c*) - M log K
(KL(q(c|x) || uniform) = M log K for a point mass), a true lower bound for that model; the learned
prior that makes it a good generative model is an autoregressive categorical MADE over the codes
(:mod:`vaegen.model.code_prior`) fitted *after* training (the ``code_prior`` recipe,
:class:`vaegen.runs.recipes.code_prior.CodePrior`) and attached as ``prior``.

Why a model kind rather than a posterior: the latent of the generative model is the discrete c, not
a vector with a density on R^D; p(c) is a distribution over integer codes, which none of the
continuous priors is; and the codebook is shared by the encoder (the nearest code) and the decoder
(the code's vector).  The kind says so to the rest of vaegen (its traits: ``latents`` discrete,
``training`` codes, so only an objective that trains codes, ``vq``, trains it): its q over z is a point mass
(``is_autoencoder``, so the questions asked of an autoencoder work), it is not one continuous latent
vector with a prior of its own (no free bits, no latent diagnostics of a KL), and the ex-post
densities over R^D do not apply to it (it takes ``--density code_prior``).
"""

from __future__ import annotations

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegen.blocks import quantizers as quantizers_lib
from vaegen.blocks.quantizers import VQSettings
from vaegen.errors import NO_PRIOR_MESSAGE, ConfigError, NoPriorError
from vaegen.model.latent import LatentVariableModel
from vaegen.registry import MODEL_KINDS
from vaegen.spec.run import InferenceSpec, ModelSpec, RunSpec


class CodeLatents:
    """p(z) of a VQ-VAE with a prior over its codes: z = e_c, c ~ p(c) (a discrete distribution on
    the K^M points of R^D the codebook spans).  ``sample(seed, sample_shape) -> [*sample_shape, D]``;
    ``log_prob(z [..., D])`` is log p(c) for z on the codebook's grid (z = e_c exactly) and -inf
    elsewhere.  Built inside a bound :class:`VQVAE`."""

    def __init__(self, model: "VQVAE"):
        self.model = model

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.model.posterior.latent_dim,)

    def sample(self, *, seed: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        shape = tuple(sample_shape) if isinstance(sample_shape, (tuple, list)) else (int(sample_shape),)
        n = 1
        for s in shape:
            n *= int(s)
        c = self.model.prior.sample(seed, n)                                  # [n, M]
        return self.model.posterior.lookup(c).reshape(shape + self.event_shape)

    def log_prob(self, z: jax.Array) -> jax.Array:
        q = self.model.posterior
        c = quantizers_lib.nearest(quantizers_lib.group(z, q.code_dim), q.codebook())   # [..., M]
        on_grid = jnp.all(q.lookup(c) == z, axis=-1)
        return jnp.where(on_grid, self.model.prior.log_prob(c), -jnp.inf)


class VQVAE(LatentVariableModel):
    """p(c) p(x | z = e_c) with q(c | x) = delta(c - c*(x)) beside it (see the module).

    Attributes (those of :class:`LatentVariableModel`):
      prior: a prior over codes ``[M]`` with ``log_prob(c)`` and ``sample(key, n)`` (a
        :class:`vaegen.model.code_prior.CategoricalMADE`), or None (in training).
      posterior: a :class:`vaegen.blocks.quantizers.VectorQuantizer`, which holds the kind's
        settings (:class:`vaegen.blocks.quantizers.VQSettings`: the codebook, its moving averages
        and the restarts of unused codes).
    """

    @property
    def is_autoencoder(self) -> bool:
        """q over z is a point mass (at the code's vector): no ELBO over z, as for an autoencoder."""
        return True

    @property
    def num_groups(self) -> int:
        return self.posterior.num_groups

    @property
    def codebook_size(self) -> int:
        return self.posterior.codebook_size

    def quantize(self, x: jax.Array) -> dict[str, jax.Array]:
        """See :meth:`vaegen.blocks.quantizers.VectorQuantizer.quantize`."""
        return self.posterior.quantize(x)

    def codes(self, x: jax.Array) -> jax.Array:
        """c*(x) ``[..., M]`` int32."""
        return self.posterior.quantize(x)["indices"]

    def code_vectors(self, c: jax.Array) -> jax.Array:
        """z = e_c ``[..., D]`` for codes ``c [..., M]``."""
        return self.posterior.lookup(c)

    def log_prob_codes(self, c: jax.Array) -> jax.Array:
        """log p(c) in nats ``[...]`` for codes ``c [..., M]`` (exact for the categorical MADE)."""
        if self.prior is None:
            raise NoPriorError(NO_PRIOR_MESSAGE)
        return self.prior.log_prob(c)

    def p_z(self) -> CodeLatents:
        """p(z) as the image of p(c) on the codebook (:class:`CodeLatents`)."""
        if self.prior is None:
            raise NoPriorError(NO_PRIOR_MESSAGE)
        return CodeLatents(self)

    def q_z_given_x(self, x: jax.Array) -> distrax.Distribution:
        return self.posterior(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Touches every sub-module (used by ``init``): log p(x | z = e_{c*(x)})."""
        q = self.posterior.quantize(x)
        if self.prior is not None:
            self.prior.log_prob(q["indices"])
        return self.log_likelihood(x, q["z"])


# --- the registered model kind ---------------------------------------------------------------------

def _check(settings: VQSettings, spec: RunSpec) -> None:
    d = int(spec.model.latent_dim)
    if d % settings.code_dim:
        raise ConfigError(f"config.model.kind.code_dim={settings.code_dim} must divide config.model.latent_dim={d} "
                          f"(z_e is cut into latent_dim / code_dim groups): choose a divisor of {d}")
    if spec.model.prior.trait("exists"):
        raise ConfigError(f"config.model.kind=vq_vae trains without a prior (its prior over codes is fitted after "
                          f"training: vaegen expost --density code_prior), not config.model.prior="
                          f"{spec.model.prior.name!r}: set --config.model.prior=none")
    if not spec.inference.posterior.trait("deterministic"):
        raise ConfigError("config.model.kind=vq_vae quantizes a deterministic encoder's output z_e = f(x): set "
                          "--config.inference.posterior=point_mass")


@MODEL_KINDS.register("vq_vae", settings=VQSettings, check=_check, traits={"latents": "discrete", "training": "codes"})
def build(settings: VQSettings, *, model: ModelSpec, inference: InferenceSpec, event_shape: tuple[int, ...]) -> VQVAE:
    """c ~ p(c) over K^M codes, x ~ p(x | e_c); q(c | x) the nearest codes of z_e(x) (VQ-VAE, van den Oord et al. 2017)."""
    d = int(model.latent_dim)
    decoder = model.decoder.build(event_ndims=1, output_shape=event_shape)
    likelihood = model.likelihood.build(decoder=decoder, event_shape=event_shape)
    encoder = inference.encoder.build(event_ndims=len(event_shape))
    posterior = quantizers_lib.VectorQuantizer(encoder=encoder, latent_dim=d, settings=settings)
    return VQVAE(prior=None, likelihood=likelihood, posterior=posterior)


def with_prior(model: VQVAE, prior: nn.Module) -> VQVAE:
    """``model`` with ``prior`` (over codes) attached: the generative VQ-VAE."""
    return VQVAE(prior=prior, likelihood=model.likelihood, posterior=model.posterior)
