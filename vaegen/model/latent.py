"""The generative model p(x, z) = p(z) p(x | z) and, beside it, the inference network q(z | x).

:class:`LatentVariableModel` holds three sub-modules side by side -- ``prior`` (p(z)),
``likelihood`` (p(x | z)) and ``posterior`` (q(z | x)) -- and exposes the generative process
exactly as written in the papers::

    p_z()              -> distrax distribution over z            event [D]
    p_x_given_z(z)     -> distrax distribution over x            event [*x.shape], batch z.shape[:-1]
    q_z_given_x(x)     -> distrax distribution over z            event [D]
    log_joint(x, z)    =  log p(z) + log p(x | z)                [...] nats, for z [..., D]
    sample(key, n)     :  z ~ p(z), x ~ p(x | z)                 [n, *x.shape]

Parameters live in one tree ``{"params": {"prior": ..., "likelihood": ..., "posterior": ...}}``:
the generative model's parameters are ``prior`` and ``likelihood``; the inference network's are
``posterior``.

An autoencoder is the same class with ``posterior`` a point mass and ``prior=None``: it has a
decoder p(x | z) but no p(z), so ``p_z``, ``log_joint`` and ``sample`` raise
:class:`NoPriorError` -- there is nothing to sample from until a density over the codes is
supplied (e.g. a mixture fitted to the training codes, which then becomes ``prior``).
"""

from __future__ import annotations

from typing import Any, Mapping

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vaegen.blocks import likelihoods as likelihoods_lib
from vaegen.blocks import networks as networks_lib
from vaegen.blocks import posteriors as posteriors_lib
from vaegen.blocks import priors as priors_lib
from vaegen.errors import NO_PRIOR_MESSAGE, NoPriorError


class LatentVariableModel(nn.Module):
    """p(x, z) = p(z) p(x | z), with an amortized q(z | x) beside it.

    Attributes:
      prior: module returning p(z) (see :mod:`vaegen.priors`), or ``None`` for an autoencoder.
      likelihood: module mapping ``z [..., D]`` to p(x | z) (see :mod:`vaegen.likelihoods`).
      posterior: module mapping ``x [..., *event]`` to q(z | x) (see :mod:`vaegen.posteriors`).
    """

    prior: nn.Module | None
    likelihood: nn.Module
    posterior: nn.Module

    # --- the generative process -------------------------------------------------------------
    def p_z(self) -> distrax.Distribution:
        """p(z): event shape [D]."""
        if self.prior is None:
            raise NoPriorError(NO_PRIOR_MESSAGE)
        return self.prior(posterior=self.posterior)

    def p_x_given_z(self, z: jax.Array) -> distrax.Distribution:
        """p(x | z) for ``z [..., D]``: batch shape [...], event shape = one observation."""
        return self.likelihood(z)

    def log_likelihood(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """log p(x | z) in nats, ``[...]`` for ``x [*event]`` and ``z [..., D]``."""
        return self.p_x_given_z(z).log_prob(x)

    def log_joint(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """log p(x, z) = log p(z) + log p(x | z) in nats, ``[...]`` for ``z [..., D]``."""
        return self.p_z().log_prob(z) + self.log_likelihood(x, z)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Ancestral samples x ~ p(x | z), z ~ p(z): ``[n, *event]``."""
        return self.sample_with_latents(key, n)[1]

    def sample_with_latents(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """Ancestral sampling returning ``(z [n, D], x [n, *event])``."""
        key_z, key_x = jax.random.split(key)
        z = self.p_z().sample(seed=key_z, sample_shape=(n,))
        x = self.p_x_given_z(z).sample(seed=key_x)
        return z, x

    # --- inference, beside the model --------------------------------------------------------
    def q_z_given_x(self, x: jax.Array) -> distrax.Distribution:
        """q(z | x) for ``x [..., *event]``: batch shape [...], event shape [D]."""
        return self.posterior(x)

    @property
    def is_autoencoder(self) -> bool:
        """True when q(z | x) is a point mass (the deterministic autoencoder)."""
        return posteriors_lib.is_point_mass(self.posterior)

    @property
    def has_prior(self) -> bool:
        return self.prior is not None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Touches every sub-module (used by ``init``): returns log p(x | z = E_q[z]) in nats."""
        z = self.q_z_given_x(x).mean()
        if self.prior is not None:
            self.p_z().log_prob(z)  # creates the parameters of every factor of p(z)
        return self.log_likelihood(x, z)


# --- construction from a config -------------------------------------------------------------
#
# A model is assembled from four parts, each built by its own function from its config section:
# the prior p(z) (build_prior), the likelihood p(x | z) (build_likelihood, on a decoder trunk),
# the posterior q(z | x) (build_posterior, on an encoder trunk), and the trunks themselves
# (build_network).  Two stochastic layers (config.model.top_latent_dim > 0) are assembled by
# vaegen.hierarchical from the same parts.

NETWORKS: dict[str, type[nn.Module]] = {
    "mlp": networks_lib.MLP,
    "conv_encoder": networks_lib.ConvEncoder,
    "conv_decoder": networks_lib.ConvDecoder,
}


def build_network(cfg: Mapping[str, Any], *, event_ndims: int, output_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Builds a trunk from a config section ``{network, hidden, activation, ...}``.

    Args:
      cfg: the section as a dict.
      event_ndims: trailing input dimensions that form one example (3 for images, 1 for z).
      output_shape: the observation's shape, for decoder trunks that produce per-pixel features
        (e.g. a convolutional decoder); ``None`` elsewhere.
    """
    cfg = dict(cfg)
    name = cfg.pop("network")
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETWORKS)}")
    return networks_lib.from_config(NETWORKS[name], cfg, event_ndims=event_ndims, output_shape=output_shape)


def _tuples(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def build_prior(model_cfg: Any, latent_dim: int, event_shape: tuple[int, ...]) -> nn.Module | None:
    """p(z) over ``latent_dim`` dimensions from ``config.model`` (``None``: no prior, an AE)."""
    name = model_cfg.prior
    if name == "none":
        return None
    if name == "standard_normal":
        return priors_lib.StandardNormal(latent_dim=latent_dim)
    if name == "mixture":
        return priors_lib.MixtureOfGaussians(latent_dim=latent_dim, num_components=int(model_cfg.prior_components))
    if name == "vampprior":  # p(z) = 1/K sum_k q(z | u_k): the pseudo-inputs u_k have the data's shape
        return priors_lib.VampPrior(
            latent_dim=latent_dim,
            num_components=int(model_cfg.prior_components),
            event_shape=tuple(int(s) for s in event_shape),
            init_mean=float(model_cfg.vampprior_init_mean),
            init_std=float(model_cfg.vampprior_init_std),
        )
    raise ValueError(f"unknown prior {name!r}")


def build_likelihood(model_cfg: Any, decoder: nn.Module, event_shape: tuple[int, ...]) -> nn.Module:
    """p(x | z) from ``config.model`` on a decoder trunk."""
    name = model_cfg.likelihood
    if name == "bernoulli":
        return likelihoods_lib.Bernoulli(decoder=decoder, event_shape=event_shape)
    if name == "gaussian":
        return likelihoods_lib.Gaussian(
            decoder=decoder,
            event_shape=event_shape,
            scale=model_cfg.gaussian_scale,
            fixed_scale=float(model_cfg.gaussian_fixed_scale),
        )
    if name == "discretized_logistic":
        return likelihoods_lib.DiscretizedLogistic(
            decoder=decoder,
            event_shape=event_shape,
            num_mixtures=int(model_cfg.logistic_mixtures),
            channel_coupling=bool(model_cfg.logistic_channel_coupling),
        )
    raise ValueError(f"unknown likelihood {name!r}")


def build_posterior(inference_cfg: Any, encoder: nn.Module, latent_dim: int) -> nn.Module:
    """q(z | x) over ``latent_dim`` dimensions from ``config.inference`` on an encoder trunk."""
    kind, d = inference_cfg.posterior, latent_dim
    if kind == "diagonal_gaussian":
        return posteriors_lib.DiagonalGaussian(
            encoder=encoder,
            latent_dim=d,
            min_log_scale=float(inference_cfg.min_log_scale),
            max_log_scale=float(inference_cfg.max_log_scale),
        )
    if kind == "fixed_scale_gaussian":
        return posteriors_lib.FixedScaleGaussian(encoder=encoder, latent_dim=d, scale=float(inference_cfg.posterior_scale))
    if kind == "point_mass":
        return posteriors_lib.PointMass(encoder=encoder, latent_dim=d)
    if kind == "full_covariance_gaussian":
        return posteriors_lib.FullCovarianceGaussian(
            encoder=encoder,
            latent_dim=d,
            min_log_scale=float(inference_cfg.min_log_scale),
            max_log_scale=float(inference_cfg.max_log_scale),
        )
    if kind == "flow":
        return posteriors_lib.FlowPosterior(
            encoder=encoder,
            latent_dim=d,
            num_layers=int(inference_cfg.flow_layers),
            hidden=tuple(int(h) for h in inference_cfg.flow_hidden),
            context_dim=int(inference_cfg.flow_context_dim),
            activation=inference_cfg.flow_activation,
            min_log_scale=float(inference_cfg.min_log_scale),
            max_log_scale=float(inference_cfg.max_log_scale),
        )
    raise ValueError(f"unknown posterior {kind!r}")


def build_model(model_cfg: Any, inference_cfg: Any, event_shape: tuple[int, ...]) -> LatentVariableModel:
    """Builds a :class:`LatentVariableModel` from the ``model`` and ``inference`` config sections.

    Args:
      model_cfg: ``config.model`` (latent_dim, prior, likelihood, decoder, ...).
      inference_cfg: ``config.inference`` (posterior, encoder, ...).
      event_shape: shape of one observation, e.g. ``(28, 28, 1)``.
    """
    event_shape = tuple(int(s) for s in event_shape)
    if model_cfg.get("kind", "latent_variable") == "autoregressive":
        from vaegen.model import autoregressive as autoregressive  # a model with no z: MADE, exact log p(x)

        return autoregressive.build(model_cfg, event_shape)
    if int(model_cfg.get("top_latent_dim", 0)) > 0:
        from vaegen.model import two_layer as hierarchical  # two stochastic layers, z = [z1, z2]

        return hierarchical.build(model_cfg, inference_cfg, event_shape)
    d = int(model_cfg.latent_dim)
    prior = build_prior(model_cfg, d, event_shape)
    decoder = build_network(model_cfg.decoder.to_dict(), event_ndims=1, output_shape=event_shape)
    likelihood = build_likelihood(model_cfg, decoder, event_shape)
    encoder = build_network(inference_cfg.encoder.to_dict(), event_ndims=len(event_shape))
    posterior = build_posterior(inference_cfg, encoder, d)
    return LatentVariableModel(prior=prior, likelihood=likelihood, posterior=posterior)


def init_params(model: LatentVariableModel, key: jax.Array, event_shape: tuple[int, ...]):
    """Initialises the parameters ``{"params": {...}}`` with a dummy observation."""
    return model.init(key, jnp.zeros(tuple(event_shape), jnp.float32))


def set_output_bias(variables, model: LatentVariableModel, data_mean) -> Any:
    """Returns ``variables`` with the likelihood head's bias set so that p(x | z) starts at the
    data mean ``[H, W, C]`` (Bernoulli: logit of the pixel means, as in Burda et al. 2016;
    Gaussian: the means; discretized logistic: every component's mean).  A head on a spatial
    decoder trunk (``spatial_output``) has one bias per channel, set from each channel's mean
    over the pixels (:func:`vaegen.likelihoods.output_bias`)."""
    custom = getattr(model, "with_output_bias", None)  # models without p(x | z) (autoregressive)
    if custom is not None:
        return custom(variables, data_mean)
    head = type(model.likelihood).head_name
    bias = jnp.asarray(likelihoods_lib.output_bias(model.likelihood, data_mean), jnp.float32)
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])  # shallow copy of the tree
    old = params["likelihood"][head]["bias"]
    if old.shape != bias.shape:
        raise ValueError(f"output bias of shape {bias.shape} does not fit head {head!r} {old.shape}")
    params["likelihood"][head] = dict(params["likelihood"][head], bias=bias)
    return {**variables, "params": params}
