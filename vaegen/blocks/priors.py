"""Priors p(z).

A prior is a Flax module whose call returns a distrax distribution with event shape ``[D]``
and empty batch shape.  It receives the model's inference network as ``posterior`` so that
priors defined through the encoder (the VampPrior, p(z) = 1/K sum_k q(z | u_k)) can use it;
priors that do not need it ignore it.

* :class:`StandardNormal` -- p(z) = N(0, I), no parameters.
* :class:`MixtureOfGaussians` -- p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2), all learned.
* :class:`IndexedMixture` -- the ``distrax.MixtureSameFamily`` both mixtures return: it samples one
  component per draw.
* :class:`VampPrior` -- p(z) = 1/K sum_k q(z | u_k), K learned pseudo-inputs u_k pushed
  through the encoder (Tomczak & Welling 2018).  :func:`init_pseudo_inputs_from_data` sets the
  pseudo-inputs to K data examples.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaegen.blocks import posteriors as posteriors_lib
from vaegen.errors import ConfigError
from vaegen.registry import POSTERIORS, PRIORS, NoSettings, Settings, setting
from vaegen.spec.run import RunSpec


# --- settings: what a config's prior section holds, and what each module reads ----------------------

@dataclasses.dataclass(frozen=True)
class MixtureSettings(Settings):
    components: int = setting(500, "K mixture components", gt=0)


@dataclasses.dataclass(frozen=True)
class VampPriorSettings(Settings):
    components: int = setting(500, "K pseudo-inputs", gt=0)
    init: str = setting("random", "random: u_k = sigmoid(w_k), w_k ~ N(init_mean, init_std); data: K training "
                        "examples", choices=("random", "data"))
    init_mean: float = setting(-0.05, "mean of w at a random initialisation")
    init_std: float = setting(0.01, "standard deviation of w at a random initialisation", gt=0)


# --- the modules ---------------------------------------------------------------------------------

class StandardNormal(nn.Module):
    """p(z) = N(z; 0, I_D), the VAE's default prior. No parameters."""

    latent_dim: int

    @nn.compact
    def __call__(self, posterior: Any = None) -> distrax.Distribution:
        del posterior
        d = self.latent_dim
        return distrax.MultivariateNormalDiag(jnp.zeros((d,)), jnp.ones((d,)))


class IndexedMixture(distrax.MixtureSameFamily):
    """``distrax.MixtureSameFamily`` that samples by picking a component per draw and sampling it
    alone: memory ``[n, D]`` rather than ``[n, K, D]`` (K = 500 VampPrior components).  The
    density is the parent's, log p(z) = logsumexp_k [log pi_k + log p_k(z)].  Components whose
    distrax class cannot be indexed by an array fall back to the parent's sampler."""

    def _sample_n(self, key: jax.Array, n: int) -> jax.Array:
        key_k, key_z = jax.random.split(key)
        k = self.mixture_distribution.sample(seed=key_k, sample_shape=(n,))  # [n]
        try:
            picked = self.components_distribution[k]                          # batch [n]
        except (NotImplementedError, TypeError, IndexError, ValueError):
            return super()._sample_n(key, n)
        return picked.sample(seed=key_z)                                      # [n, D]


class MixtureOfGaussians(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2), a learned mixture of K diagonal Gaussians.

    Parameters (``variables["params"]["prior"]``): ``logits [K]`` (pi = softmax(logits), init 0:
    equal weights), ``means [K, D]`` (init N(0, 1), drawn from the model's init key, so a given
    seed gives the same means), ``log_scales [K, D]`` (log sigma, init 0).

    Attributes:
      latent_dim: D.
      settings: :class:`MixtureSettings`: K = ``components``.
    """

    latent_dim: int
    settings: MixtureSettings = MixtureSettings()

    @nn.compact
    def __call__(self, posterior: Any = None) -> distrax.Distribution:
        del posterior
        k, d = self.settings.components, self.latent_dim
        logits = self.param("logits", nn.initializers.zeros, (k,))
        means = self.param("means", nn.initializers.normal(1.0), (k, d))
        log_scales = self.param("log_scales", nn.initializers.zeros, (k, d))
        # p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2)
        return IndexedMixture(
            mixture_distribution=distrax.Categorical(logits=logits),
            components_distribution=distrax.MultivariateNormalDiag(means, jnp.exp(log_scales)),
        )


PSEUDO_INPUTS_PARAM = "pseudo_input_logits"  # w [K, *event]; the pseudo-inputs are u = sigmoid(w)


class VampPrior(nn.Module):
    """The VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k).

    The K pseudo-inputs u_k = sigmoid(w_k) live in data space (``[K, *event_shape]``, values in
    (0, 1)) and are learned with the model; the prior is the inference network's posterior
    averaged over them, so it follows the aggregate posterior.  Gradients of log p(z) reach both
    the pseudo-inputs and the encoder.

    Parameter (``variables["params"][...]["pseudo_input_logits"]``): w ``[K, *event_shape]``,
    initialised N(init_mean, init_std) (by default the VampPrior code's -0.05 and 0.01: u_k close to
    0.49), or set to logit(x_k) of K data examples by :func:`init_pseudo_inputs_from_data`.

    Call: ``prior(posterior=q)`` with ``q`` any callable mapping ``x [K, *event_shape]`` to a
    distribution over z with batch shape ``[K]`` and event shape ``[D]``: the model's amortized
    posterior module, or, for two stochastic layers, a function returning q(z2 | u).  It must
    have a density (a point mass or a family without ``log_prob`` cannot make a prior).

    Attributes:
      latent_dim: D (checked against the posterior's event shape).
      event_shape: shape of one observation, e.g. ``(28, 28, 1)``.
      settings: :class:`VampPriorSettings`: K = ``components`` pseudo-inputs, the normal
        initialisation of w (``init_mean``, ``init_std``).
    """

    latent_dim: int
    event_shape: tuple[int, ...]
    settings: VampPriorSettings = VampPriorSettings()

    @nn.compact
    def __call__(self, posterior: Callable[[jax.Array], distrax.Distribution] | None = None) -> distrax.Distribution:
        if posterior is None:
            raise ValueError("the VampPrior p(z) = 1/K sum_k q(z | u_k) needs the inference network: call it as "
                             "prior(posterior=q)")
        if posteriors_lib.is_point_mass(posterior):
            raise ValueError("the VampPrior needs a posterior with a density; q(z | x) = delta(z - f(x)) has none")
        k = self.settings.components
        shape = (k,) + tuple(self.event_shape)
        init_mean, init_std = self.settings.init_mean, self.settings.init_std

        def init(key, shape):
            return init_mean + init_std * jax.random.normal(key, shape, jnp.float32)

        w = self.param(PSEUDO_INPUTS_PARAM, init, shape)
        u = nn.sigmoid(w)                                   # pseudo-inputs u_k   [K, *event]
        q_u = posterior(u)                                  # q(z | u_k): batch [K], event [D]
        if tuple(q_u.batch_shape) != (k,) or tuple(q_u.event_shape) != (self.latent_dim,):
            raise ValueError(
                f"the VampPrior's posterior maps {k} pseudo-inputs to a distribution with batch shape "
                f"{tuple(q_u.batch_shape)} and event shape {tuple(q_u.event_shape)}; expected ({k},) and "
                f"({self.latent_dim},)")
        # p(z) = 1/K sum_k q(z | u_k)
        return IndexedMixture(mixture_distribution=distrax.Categorical(logits=jnp.zeros((k,))),
                              components_distribution=q_u)


def _vampprior_paths(tree: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths (key tuples) to every ``pseudo_input_logits`` leaf in a parameter tree."""
    if not isinstance(tree, Mapping):
        return []
    out = []
    for key, sub in tree.items():
        if key == PSEUDO_INPUTS_PARAM and not isinstance(sub, Mapping):
            out.append(path + (key,))
        else:
            out += _vampprior_paths(sub, path + (key,))
    return out


def _replace(tree: Mapping, path: tuple[str, ...], value: Any) -> dict:
    """A copy of ``tree`` (as nested dicts along ``path``) with the leaf at ``path`` replaced."""
    head, *rest = path
    new = dict(tree)
    new[head] = value if not rest else _replace(tree[head], tuple(rest), value)
    return new


def _find_pseudo_inputs(variables: Mapping) -> tuple[str, ...]:
    paths = _vampprior_paths(variables.get("params", {}), ("params",))
    if len(paths) != 1:
        found = "none" if not paths else ", ".join("/".join(p) for p in paths)
        raise ValueError(f"expected the parameters of one VampPrior ('{PSEUDO_INPUTS_PARAM}' under "
                         f"variables['params']), found {found}")
    return paths[0]


def pseudo_inputs(variables: Mapping) -> jax.Array:
    """The VampPrior's pseudo-inputs u = sigmoid(w), ``[K, *event]`` in (0, 1), wherever the prior
    sits in ``variables``."""
    w = variables
    for key in _find_pseudo_inputs(variables):
        w = w[key]
    return jax.nn.sigmoid(jnp.asarray(w))


def init_pseudo_inputs_from_data(variables: Mapping, x: Any, *, eps: float = 1e-3) -> dict:
    """Returns ``variables`` with the VampPrior's pseudo-inputs set to K data examples:
    w = logit(clip(x, eps, 1 - eps)), so that u = sigmoid(w) = x up to the clipping.

    Call it once, on the freshly initialised variables of a new run (after ``init_params`` and
    ``set_output_bias``, before the optimizer state is created from them); a resumed run restores
    its learned pseudo-inputs from the checkpoint instead.

    Args:
      variables: ``{"params": {...}}`` holding exactly one VampPrior (found by its parameter name
        wherever it sits, e.g. ``params/prior``).
      x: ``[K, *event]`` examples as the model sees them, floats in [0, 1] (binarized or grey
        levels / 255), K = the number of pseudo-inputs.
    Returns:
      A new variables tree; the input is not modified.
    """
    path = _find_pseudo_inputs(variables)
    old = variables
    for key in path:
        old = old[key]
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"pseudo-inputs are initialised from floats in [0, 1], got dtype {x.dtype} "
                         "(divide grey levels by 255)")
    if x.shape != tuple(old.shape):
        raise ValueError(f"the VampPrior has pseudo-inputs of shape {tuple(old.shape)} ([K, *event]); "
                         f"got data of shape {x.shape}")
    if not np.all((x >= 0.0) & (x <= 1.0)):
        raise ValueError("pseudo-inputs are initialised from values in [0, 1]; the data given lie outside")
    m = np.clip(x.astype(np.float64), eps, 1.0 - eps)
    w = jnp.asarray(np.log(m) - np.log1p(-m), old.dtype)
    return _replace(variables, path, w)


# --- registered priors -----------------------------------------------------------------------------
#
# Traits (declared with :data:`vaegen.registry.PRIORS`): ``exists`` (False for ``none``: the
# autoencoder has no p(z)), ``needs_posterior``, ``data_init``, ``factorized`` (and, for the
# densities of :mod:`vaegen.blocks.densities`, ``expost`` and ``log_prob``).


def _vampprior_needs_a_density(settings: VampPriorSettings, spec: RunSpec) -> None:
    posterior = spec.inference.posterior
    if not posterior.trait("batched_density"):
        allowed = [c.name for c in POSTERIORS if c.trait("batched_density")]
        raise ConfigError(
            f"config.model.prior=vampprior (p(z) = 1/K sum_k q(z | u_k)) needs a posterior with a density on a batch "
            f"of pseudo-inputs ({', '.join(allowed)}), not config.inference.posterior={posterior.name!r}")


def _vampprior_data_init(settings: VampPriorSettings, variables: Any, *, examples: Callable[[int], np.ndarray],
                         num_examples: int) -> Any:
    """The pseudo-inputs set to K training examples (``init=data``); ``variables`` unchanged otherwise."""
    if settings.init != "data":
        return variables
    if settings.components > num_examples:
        raise ConfigError(
            f"config.model.prior.init=data takes {settings.components} pseudo-inputs (config.model.prior.components) "
            f"from {num_examples} training examples; lower components or use init=random")
    return init_pseudo_inputs_from_data(variables, examples(settings.components))


@PRIORS.register("standard_normal", traits={"factorized": True, "label": "N(0, I)"})
def standard_normal(settings: NoSettings, *, latent_dim: int, event_shape: tuple[int, ...]) -> StandardNormal:
    """p(z) = N(0, I): no parameters."""
    del settings, event_shape
    return StandardNormal(latent_dim=latent_dim)


@PRIORS.register("mixture", settings=MixtureSettings, traits={"label": "a learned mixture of Gaussians"})
def mixture(settings: MixtureSettings, *, latent_dim: int, event_shape: tuple[int, ...]) -> MixtureOfGaussians:
    """p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2): K learned diagonal Gaussians."""
    del event_shape
    return MixtureOfGaussians(latent_dim=latent_dim, settings=settings)


@PRIORS.register("vampprior", settings=VampPriorSettings, check=_vampprior_needs_a_density,
                 traits={"needs_posterior": True, "data_init": _vampprior_data_init})
def vampprior(settings: VampPriorSettings, *, latent_dim: int, event_shape: tuple[int, ...]) -> VampPrior:
    """p(z) = 1/K sum_k q(z | u_k): K learned pseudo-inputs through the encoder (Tomczak & Welling 2018)."""
    return VampPrior(latent_dim=latent_dim, event_shape=tuple(int(s) for s in event_shape), settings=settings)


@PRIORS.register("none", traits={"exists": False})
def no_prior(settings: NoSettings, *, latent_dim: int, event_shape: tuple[int, ...]) -> None:
    """No p(z): an autoencoder, which defines no distribution over x until a density is fitted to its codes."""
    del settings, latent_dim, event_shape
    return None
