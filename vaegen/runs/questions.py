"""The common questions about a trained run, one line each (methods of :class:`vaegen.Run`)::

    run.log_px(x, k=1000)                 log p(x) by importance sampling           [N] nats
    run.log_px(x, method="ais")           ... by annealed importance sampling      [N] nats
    run.log_px(x, method="exact")         ... summed over every z (small discrete z) [N] nats
    run.elbo(x)                           the ELBO                                 [N] nats
    run.reconstruct(x)                    E[x | z = E_q[z | x]]                    [N, *event]
    run.codes(x)                          E_q[z | x] (f(x) for an autoencoder)     [N, D]

``x`` is ``[N, *event]`` observations as the model sees them (floats; binary for a Bernoulli
likelihood), or one observation ``[*event]`` (then a scalar, or one image/code, comes back).
Each call is batched and sharded over the local devices (:func:`vaegen.sharding.map_examples`)
and checks every argument first: ``k``, ``num_samples`` and ``batch_size`` are integers >= 1 (2.5
is refused, not truncated), ``key`` a JAX random key, and ``x`` observations of the model
(``check=False`` skips the check of ``x``); randomness comes from ``key`` (default
``jax.random.key(0)``, so a call repeats exactly), example i drawing from ``fold_in(key, i)``.

What each number is: ``log_px`` by importance sampling is a stochastic lower bound on log p(x)
(the log of an unbiased estimate of p(x); its expectation is IWAE_k <= log p(x)), and so is AIS's;
for a model with an exact likelihood (MADE) ``log_px`` is exact and ``k`` is unused, and so is
``method="exact"`` on a discrete z with few configurations (a sum over all of them); ``elbo`` is an
unbiased estimate of the ELBO (exact in expectation; a bound on log p(x) in expectation).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaegen import sharding as sharding_lib
from vaegen.blocks import discrete as discrete_lib
from vaegen.blocks import posteriors as posteriors_lib
from vaegen.data import binarization
from vaegen.data import splits as splits_lib
from vaegen.errors import ArgumentError, ConfigError, NoLatentError, NO_LATENT_MESSAGE, UndefinedEstimateError
from vaegen.estimators import ais as ais_lib
from vaegen.estimators import enumeration as enumeration_lib
from vaegen.estimators import importance as importance_lib
from vaegen.model import latent as latent_lib
from vaegen.objectives.bounds import ELBO, ELBOSettings, objective_terms
from vaegen.spec.eval import AISSettings
from vaegen.objectives.exact import ExactLogLikelihood
from vaegen.train.rng import purpose_key

METHODS = ("is", "ais", "exact")
PROPOSALS = ("posterior", "prior")


@dataclasses.dataclass(frozen=True)
class _Decoded:
    """E_q[z | x] and the mean of p(x | z) there, for one example."""

    model: Any

    def __call__(self, variables, x, key):
        del key

        def f(m):
            z = m.q_z_given_x(x).mean()
            return {"codes": z, "reconstruction": m.p_x_given_z(z).mean()}

        return self.model.apply(variables, method=f)


def _where(method: str) -> str:
    """``run.log_px`` for a method of a run; a qualified name (``vaegen.evaluate``) as it is."""
    return method if "." in method else f"run.{method}"


def check_int(value: Any, method: str, name: str, what: str, *, minimum: int = 1, optional: bool = False) -> None:
    """:class:`vaegen.errors.ArgumentError` naming the argument ``name`` of ``run.<method>`` unless
    ``value`` is an integer >= ``minimum`` (``None`` too with ``optional``): ``2.5`` is refused, not
    truncated."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(f"{_where(method)}: argument {name} must be an integer >= {minimum} ({what}), got "
                            f"{value!r}")
    if value < minimum:
        raise ArgumentError(f"{_where(method)}: argument {name} must be >= {minimum} ({what}), got {value}")


def check_key(key: Any, method: str, *, optional: bool = True) -> None:
    """:class:`vaegen.errors.ArgumentError` naming the argument ``key`` of ``run.<method>`` unless it
    is a JAX random key (``jax.random.key(seed)``, or a legacy ``jax.random.PRNGKey(seed)``;
    ``None`` with ``optional``)."""
    if (optional and key is None) or isinstance(key, jax.core.Tracer):
        return
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return
    if dtype == np.uint32 and np.shape(key)[-1:] == (2,):  # a legacy raw key
        return
    raise ArgumentError(f"{_where(method)}: argument key must be a JAX random key, e.g. jax.random.key(0), got "
                        f"{type(key).__name__}{'' if dtype is None else f' of dtype {dtype}'}"
                        + (f" {key!r}" if isinstance(key, (int, float, str)) else ""))


CODE_PROPOSAL_CODES = 10000
"""Training examples whose codes give sigma of the proposal around the code (:meth:`Questions.with_code_proposal`)."""


class Questions:
    """Mixed into :class:`vaegen.Run` (which provides ``model``, ``variables``, ``spec``,
    ``event_shape``, ``has_latents``, ``recipe`` and ``check_x``)."""

    def _examples(self, x: Any, method: str, check: bool) -> tuple[jax.Array, bool]:
        if check:
            self.check_x(x, method)
        xs = jnp.asarray(x, jnp.float32)
        single = xs.ndim == len(self.event_shape)
        return (xs[None] if single else xs), single

    @staticmethod
    def _key(key: jax.Array | None) -> jax.Array:
        return jax.random.key(0) if key is None else key

    def _map(self, fn: Any, xs: jax.Array, key: jax.Array | None, batch_size: int | None) -> Any:
        f = jax.tree_util.Partial(fn, self.variables)
        return sharding_lib.map_examples(f, xs, self._key(key), batch_size=int(batch_size or min(xs.shape[0], 256)))

    def log_px(self, x: Any, k: int = 1000, *, method: str = "is", proposal: str = "posterior",
               ais: AISSettings | None = None, key: jax.Array | None = None, batch_size: int | None = None,
               check: bool = True) -> jax.Array:
        """log p(x) per example, nats, ``[N]`` (a scalar for one observation).

        Args:
          k: importance samples (``method="is"``).
          method: ``is`` (importance sampling from ``proposal``: ``posterior`` q(z|x) -- for a
            point-mass q with a p(z), a WAE or an AAE, the scale mixture around the code of
            :meth:`with_code_proposal` -- or ``prior`` p(z)), ``ais`` (annealed importance sampling with ``ais``, default the run's
            ``eval.ais`` settings, started as they say; a continuous z only) or ``exact`` (the sum over every
            configuration of a discrete z, :mod:`vaegen.estimators.enumeration`).
        ``is`` and ``ais`` are stochastic lower bounds on log p(x), ``exact`` is exact; a model with an
        exact likelihood (MADE) returns its exact log p(x).  Raises :class:`vaegen.errors.UndefinedEstimateError` for a
        model without a prior (an autoencoder: fit a density to its codes first), and for ``exact`` on
        a continuous z or one with too many configurations.
        """
        check_int(k, "log_px", "k", "importance samples per example")
        if method not in METHODS:
            raise ConfigError(f"run.log_px: method={method!r} is not one of {', '.join(METHODS)}")
        if proposal not in PROPOSALS:
            raise ConfigError(f"run.log_px: proposal={proposal!r} is not one of {', '.join(PROPOSALS)}")
        if ais is not None and not isinstance(ais, AISSettings):
            raise ArgumentError(f"run.log_px: argument ais must be a vaegen.spec.eval.AISSettings (the AIS settings), "
                                f"got {type(ais).__name__}")
        check_key(key, "log_px")
        check_int(batch_size, "log_px", "batch_size", "examples per device call", optional=True)
        xs, single = self._examples(x, "log_px", check)
        if self.spec.model.kind.trait("exact_log_likelihood"):
            out = objective_terms(self.model, self.variables, ExactLogLikelihood(), xs, self._key(key),
                                  batch_size=batch_size)["log_px"]
        elif method == "is" and proposal == "posterior" and (own := self._recipe_estimate(xs, key, k)) is not None:
            out = own
        elif method == "is":
            model, variables = self.model, self.variables
            if proposal == "posterior" and self.is_autoencoder and self.has_prior:
                model, variables = self.with_code_proposal(batch_size=batch_size)
            log_joint, q = importance_lib.model_functions(model, variables, proposal=proposal)
            out = importance_lib.importance_sampling(log_joint, q, xs, self._key(key),
                                                     num_samples=k, batch_size=batch_size)["log_px"]
        elif method == "exact":
            fns = enumeration_lib.enumeration_functions(self.model, self.variables)
            out = enumeration_lib.exact_log_px(*fns, xs, batch_size=batch_size)["log_px"]
        else:
            if self.spec.model.prior.trait("discrete"):
                raise UndefinedEstimateError(discrete_lib.NO_HMC)
            settings = self.spec.eval.ais if ais is None else ais
            log_joint, start = importance_lib.model_functions(self.model, self.variables, proposal=settings.start)
            out = ais_lib.AIS(settings).forward(log_joint, start, xs, self._key(key), batch_size=batch_size)["log_px"]
        return out[0] if single else out

    def _recipe_estimate(self, xs: jax.Array, key: jax.Array | None, k: int) -> jax.Array | None:
        """log p(x) ``[N]`` as the recipe that made this run generative measures it its own way (the VQ-VAE's
        code prior: importance sampling over codes), or None where the registered estimators apply."""
        if self.recipe is None:
            return None
        estimate = self.recipe.build().evaluate(self, xs, self._key(key), k=int(k))
        return None if estimate is None else jnp.asarray(estimate.values["log_px"])

    def with_code_proposal(self, *, batch_size: int | None = None) -> tuple[Any, Any]:
        """``(model, variables)`` of a run whose q(z | x) is a point mass but which has a p(z) (a
        WAE, an AAE), with q replaced by the scale mixture around the code
        (:class:`vaegen.blocks.posteriors.CodeProposal`): the proposal of importance sampling.
        sigma is the per-dimension standard deviation of the codes of the first
        :data:`CODE_PROPOSAL_CODES` training examples, binarized as in training."""
        check_int(batch_size, "with_code_proposal", "batch_size", "examples per device call", optional=True)
        x_u8 = self.data().train[:CODE_PROPOSAL_CODES]
        stored = splits_lib.stored_split(self.spec.data, x_u8, "train")
        protocol = splits_lib.split_protocol(self.spec.data, "train")
        x = binarization.to_float(purpose_key(self.spec.seed, "evaluation"), jnp.asarray(stored), protocol)
        codes = np.asarray(jax.device_get(self.codes(x, batch_size=batch_size, check=False)), np.float64)
        posterior, params = posteriors_lib.code_proposal(self.model.posterior, self.variables["params"]["posterior"],
                                                         codes.std(0))
        model = latent_lib.LatentVariableModel(prior=self.model.prior, likelihood=self.model.likelihood,
                                               posterior=posterior)
        return model, {**self.variables, "params": {**self.variables["params"], "posterior": params}}

    def elbo(self, x: Any, *, num_samples: int = 1, key: jax.Array | None = None, terms: bool = False,
             batch_size: int | None = None, check: bool = True) -> jax.Array | dict[str, jax.Array]:
        """The ELBO E_q[log p(x | z)] - KL(q(z | x) || p(z)) per example, nats, ``[N]``, with
        ``num_samples`` draws of z for the first term (the KL in closed form where distrax has
        it); ``terms=True`` returns ``{"elbo", "reconstruction", "kl"}``.  Raises
        :class:`vaegen.errors.UndefinedObjectiveError` for a point-mass q (its ELBO is -inf)."""
        check_int(num_samples, "elbo", "num_samples", "draws of z per example")
        check_key(key, "elbo")
        check_int(batch_size, "elbo", "batch_size", "examples per device call", optional=True)
        xs, single = self._examples(x, "elbo", check)
        objective = ELBO(ELBOSettings(num_samples=num_samples))
        objective(self.model, self.variables, xs[0], jax.random.key(0))           # the model's own check, once
        out = objective_terms(self.model, self.variables, objective, xs, self._key(key), batch_size=batch_size)
        out = {name: out[name] for name in ("elbo", "reconstruction", "kl")}
        if single:
            out = {name: v[0] for name, v in out.items()}
        return out if terms else out["elbo"]

    def _decoded(self, x: Any, what: str, check: bool, batch_size: int | None) -> jax.Array:
        if not self.has_latents:
            raise NoLatentError(NO_LATENT_MESSAGE)
        method = "reconstruct" if what == "reconstruction" else what
        check_int(batch_size, method, "batch_size", "examples per device call", optional=True)
        xs, single = self._examples(x, method, check)
        out = self._map(_Decoded(self.model), xs, None, batch_size)[what]
        return out[0] if single else out

    def reconstruct(self, x: Any, *, batch_size: int | None = None, check: bool = True) -> jax.Array:
        """E[x | z] at z = E_q[z | x] (the code f(x) of an autoencoder): ``[N, *event]``, in the
        data's units (pixel probabilities for a Bernoulli likelihood)."""
        return self._decoded(x, "reconstruction", check, batch_size)

    def codes(self, x: Any, *, batch_size: int | None = None, check: bool = True) -> jax.Array:
        """E_q[z | x] (the code f(x) of an autoencoder), ``[N, D]``; ``run.encode(x)`` gives q(z | x)
        itself."""
        return self._decoded(x, "codes", check, batch_size)
