"""Variational families of per-example inference: each is a pytree phi per example and a pure
function ``phi -> distrax distribution`` (:mod:`vaegen.blocks.posteriors`)::

    diag      N(loc, diag exp(2 log_scale))               phi = {loc [D], log_scale [D]}
    fullcov   N(loc, L L^T), L Cholesky                   phi = {loc, log_scale, tril [D(D-1)/2]}
    flow      coupling flow on a diagonal Gaussian base   phi = {loc, log_scale, context [C], flow}

A family is named like the posterior that amortizes it (``diagonal_gaussian``, its alias
``diag``, ...; the registry of posteriors resolves the name), and an amortized posterior module
says which family its phi(x) belongs to (its ``family`` attribute), so an amortized q and its
per-example optimum q* are members of one family.

For the flow, q*_F optimises *every* parameter of the flow per example, its coupling networks
included: F is the set of all flows of that architecture.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import distrax
import jax
import jax.numpy as jnp

from vaegen.blocks import posteriors as posteriors_lib
from vaegen.errors import ConfigError, InferenceError
from vaegen.registry import POSTERIORS
from vaegen.spec.gaps import family_names

Phi = dict  # local variational parameters of one example (or, with a leading [N], of many)


@dataclasses.dataclass(frozen=True)
class DiagonalFamily:
    """q(z) = N(z; loc, diag exp(2 log_scale)): the mean-field ("fully factorised") Gaussian."""

    latent_dim: int
    name = "diag"

    def distribution(self, phi: Phi) -> distrax.Distribution:
        return posteriors_lib.diagonal_gaussian(phi)

    def standard(self) -> Phi:
        """phi of N(0, I) (= p(z) under the standard-normal prior)."""
        d = self.latent_dim
        return {"loc": jnp.zeros((d,)), "log_scale": jnp.zeros((d,))}

    def embed(self, kind: str, phi: Phi) -> Phi:
        if kind == "diag":
            return phi
        raise InferenceError(f"a diagonal Gaussian cannot start from a {kind} posterior (it cannot represent it); "
                             "use init 'prior' or a richer family")


@dataclasses.dataclass(frozen=True)
class FullCovarianceFamily:
    """q(z) = N(z; loc, L L^T), L = diag(exp(log_scale)) + strictly-lower(tril)."""

    latent_dim: int
    name = "fullcov"

    def distribution(self, phi: Phi) -> distrax.Distribution:
        return posteriors_lib.full_covariance_gaussian(phi)

    def standard(self) -> Phi:
        d = self.latent_dim
        return {"loc": jnp.zeros((d,)), "log_scale": jnp.zeros((d,)), "tril": jnp.zeros((posteriors_lib.num_tril(d),))}

    def embed(self, kind: str, phi: Phi) -> Phi:
        if kind == "fullcov":
            return phi
        if kind == "diag":
            return {**phi, "tril": jnp.zeros(phi["loc"].shape[:-1] + (posteriors_lib.num_tril(self.latent_dim),))}
        raise InferenceError(f"a full-covariance Gaussian cannot start from a {kind} posterior; use init 'prior'")


@dataclasses.dataclass(frozen=True)
class FlowFamily:
    """q(z) = T_# N(loc, diag exp(2 log_scale)), T a stack of affine coupling layers conditioned on
    a context vector (:func:`vaegen.blocks.posteriors.flow_distribution`).

    ``init_seed`` fixes the hidden-layer initialisation of a fresh (identity) flow, used when
    starting from the standard point or from a diagonal Gaussian.
    """

    latent_dim: int
    num_layers: int = 4
    hidden: tuple[int, ...] = (64,)
    context_dim: int = 16
    activation: str = "tanh"
    init_seed: int = 0
    flow_step_scale: float = 0.1
    name = "flow"

    def distribution(self, phi: Phi) -> distrax.Distribution:
        return posteriors_lib.flow_distribution(phi, activation=self.activation)

    def step_scales(self, phi: Phi) -> Phi:
        """Multipliers of the optimiser's steps: the coupling networks' weights move
        ``flow_step_scale`` times slower than the base and the context (Adam moves every weight by
        about the learning rate, and a flow has thousands of them)."""
        return {k: jax.tree_util.tree_map(lambda a: jnp.full_like(a, self.flow_step_scale if k == "flow" else 1.0), v)
                for k, v in phi.items()}

    def _identity_flow(self) -> dict:
        return posteriors_lib.init_coupling_flow(jax.random.key(self.init_seed), self.latent_dim, self.context_dim,
                                                 self.num_layers, tuple(self.hidden))

    def standard(self) -> Phi:
        d = self.latent_dim
        return {"loc": jnp.zeros((d,)), "log_scale": jnp.zeros((d,)), "context": jnp.zeros((self.context_dim,)),
                "flow": self._identity_flow()}

    def embed(self, kind: str, phi: Phi) -> Phi:
        if kind == "flow":
            ours = jax.tree_util.tree_map(jnp.shape, self._identity_flow())
            theirs = jax.tree_util.tree_map(jnp.shape, phi["flow"])
            if ours != theirs or phi["context"].shape[-1] != self.context_dim:
                raise InferenceError("the flow family's architecture (layers, hidden, context_dim) differs from the "
                                     "amortized flow's; build it with make_family('flow', model)")
            return phi
        if kind == "diag":
            batch = phi["loc"].shape[:-1]
            return {**phi, "context": jnp.zeros(batch + (self.context_dim,)), "flow": self._identity_flow()}
        raise InferenceError(f"a flow cannot start from a {kind} posterior; use init 'prior'")


Family = DiagonalFamily | FullCovarianceFamily | FlowFamily

FAMILIES: dict[str, type] = {"diagonal_gaussian": DiagonalFamily, "full_covariance_gaussian": FullCovarianceFamily,
                             "flow": FlowFamily}
"""The family of each posterior that has one (its ``refinable`` trait), by the posterior's registered name;
:func:`vaegen.spec.gaps.family_names` lists the names they may be asked for by."""


def resolve(name: str) -> type:
    """The family class asked for by ``name`` (a posterior's name or alias)."""
    try:
        canonical = POSTERIORS.get(name).name
    except ConfigError:
        canonical = None
    if canonical not in FAMILIES:
        raise InferenceError(f"unknown variational family {name!r}; choose {', '.join(family_names())}")
    return FAMILIES[canonical]


def posterior_kind(model: Any) -> str:
    """The family of the model's amortized q(z | x): ``diag``, ``fullcov`` or ``flow``."""
    post = model.posterior
    family = getattr(post, "family", None)
    if family is not None:
        return family
    if posteriors_lib.is_point_mass(post):
        raise InferenceError("the model's q(z|x) is a point mass (an autoencoder): it has no ELBO and no "
                             "variational family to refine; train a VAE")
    raise InferenceError(f"no variational family is known for the posterior {type(post).__name__}")


def make_family(name: str, model: Any | None = None, *, latent_dim: int | None = None, **flow_options) -> Family:
    """A family by name (a posterior's name or alias: ``diag``, ``fullcov``, ``flow``, ...), sized
    for ``model``.

    For ``flow`` with a model whose q(z | x) is itself a flow, the architecture is the model's (so
    that q* starts from the amortized q); otherwise ``flow_options`` (num_layers, hidden,
    context_dim, activation) or the defaults of :class:`FlowFamily`.
    """
    cls = resolve(name)
    if latent_dim is None:
        if model is None:
            raise InferenceError("make_family needs a model or latent_dim")
        latent_dim = int(model.posterior.latent_dim)
    if cls is not FlowFamily:
        return cls(latent_dim)
    if latent_dim < 2:
        raise InferenceError("the flow family needs latent_dim >= 2")
    post = model.posterior if model is not None else None
    if isinstance(post, posteriors_lib.FlowPosterior):
        s = post.settings
        flow_options = dict(num_layers=s.layers, hidden=tuple(s.hidden), context_dim=s.context_dim,
                            activation=s.activation)
    if "hidden" in flow_options:
        flow_options["hidden"] = tuple(int(h) for h in flow_options["hidden"])
    return FlowFamily(latent_dim, **flow_options)


def family_of(model: Any, **flow_options) -> Family:
    """The family of the model's own amortized posterior."""
    return make_family(posterior_kind(model), model, **flow_options)


def amortized_parameters(model: Any, variables: Any, x: jax.Array) -> tuple[str, Phi]:
    """phi(x) of the amortized q(z | x) and its family's name: ``(kind, phi)``, phi per example."""
    kind = posterior_kind(model)
    if kind == "diag":
        q = model.apply(variables, x, method="q_z_given_x")
        return kind, {"loc": q.mean(), "log_scale": jnp.log(q.stddev())}
    return kind, model.apply(variables, x, method=lambda m, x: m.posterior.parameters(x))


def initial_parameters(family: Family, init: str, model: Any, variables: Any, x: jax.Array) -> Phi:
    """phi_0 for one example: ``"amortized"`` (the encoder's phi(x), embedded in ``family``) or
    ``"prior"`` (the standard-normal point)."""
    if init == "prior":
        return family.standard()
    if init == "amortized":
        return family.embed(*amortized_parameters(model, variables, x))
    raise InferenceError(f"unknown initialisation {init!r}; choose 'amortized' or 'prior'")


