"""Diagnostics of the latent code: how much of z a model uses, and how.

For a model with a density q(z | x) and a prior p(z), over a set of N examples:

==========================  ===================================================================
``kl_per_dim``              E_x KL(q(z_d | x) || p(z_d)) for each unit d (diagonal Gaussian q; in
                            closed form for a diagonal Gaussian p, by Monte Carlo against the
                            marginals p(z_d) of a mixture of diagonal Gaussians: the learned
                            mixture and the VampPrior)
``active_units``            units with Var_x E_q[z_d | x] > 0.01 (Burda et al. 2016)
``rate``                    R = E_x KL(q(z | x) || p(z))                       (Alemi et al. 2018)
``distortion``              D = -E_x E_q[log p(x | z)];  ELBO = -(R + D)
``mutual_information``      I_q(x; z) = E_x KL(q(z | x) || q(z)) under the aggregate posterior
                            q(z) = (1/N) sum_n q(z | x_n), estimated by Monte Carlo (at most log N)
``marginal_kl``             KL(q(z) || p(z)) = R - I_q(x; z)                   (Hoffman & Johnson 2016)
``posterior_collapse``      every unit collapsed: KL(q(z_d|x) || p(z_d)) < 0.01 nats on average,
                            or no active unit
==========================  ===================================================================

For a point-mass q(z | x) = delta(z - f(x)) (the autoencoder) the KL terms, the rate and the
mutual information do not exist (KL from a point mass to a density is +inf; I_q of a
deterministic code of N distinct points is log N whatever the code): they are reported as
undefined with the reason, and the statistics of the codes f(x) (active units, their variances)
and the distortion -log p(x | z = f(x)) are computed.

All values in nats.  Per-example work runs through :func:`vaegen.sharding.map_examples`
(sharded over devices, example i keyed by ``fold_in(key, i)``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from vaegen import sharding as sharding_lib
from vaegen.model import latent as model_lib
from vaegen.objectives import bounds as objectives_lib

ACTIVE_UNIT_THRESHOLD = 0.01
COLLAPSE_THRESHOLD = 0.01

KL_POINT_MASS = "undefined: q(z|x) is a point mass, whose KL to any density p(z) is +inf"
MI_POINT_MASS = ("undefined: the code z = f(x) is deterministic, so I(x; z) = H(x) (log N for N distinct "
                 "codes) whatever the code; it measures nothing")
NO_PRIOR = "undefined: the model has no prior p(z)"


def _is_diagonal_gaussian(d: distrax.Distribution) -> bool:
    return isinstance(d, distrax.MultivariateNormalDiag)


def marginals(p: distrax.Distribution) -> distrax.Distribution | None:
    """The one-dimensional marginals p(z_d) of a prior over z [D], as one distribution of batch
    shape [D] (its ``log_prob`` takes ``z [..., D]``): Normals for a diagonal Gaussian, mixtures of
    Normals (same weights) for a mixture of diagonal Gaussians; ``None`` for any other prior."""
    if _is_diagonal_gaussian(p):
        return distrax.Normal(p.loc, p.scale_diag)
    if isinstance(p, distrax.MixtureSameFamily) and _is_diagonal_gaussian(p.components_distribution):
        comp = p.components_distribution                                  # batch [K], event [D]
        logits = p.mixture_distribution.logits                            # [K]
        d = comp.loc.shape[-1]
        return distrax.MixtureSameFamily(distrax.Categorical(logits=jnp.broadcast_to(logits, (d,) + logits.shape)),
                                         distrax.Normal(comp.loc.T, comp.scale_diag.T))   # batch [D], K each
    return None


@dataclasses.dataclass(frozen=True)
class _PosteriorTerms:
    """Per-example statistics of q(z | x) (see :func:`posterior_terms`)."""

    model: model_lib.LatentVariableModel
    num_samples: int

    def __call__(self, variables, x, key):
        def terms(m: model_lib.LatentVariableModel):
            q = m.q_z_given_x(x)
            out = {"mean": q.mean()}                                    # E_q[z | x]   [D]
            if m.is_autoencoder:
                out["reconstruction"] = m.log_likelihood(x, out["mean"])   # log p(x | z = f(x))
                return out
            z = q.sample(seed=key, sample_shape=(self.num_samples,))     # [S, D]
            out["reconstruction"] = jnp.mean(m.log_likelihood(x, z))    # E_q[log p(x | z)]
            if _is_diagonal_gaussian(q):
                out["loc"], out["scale"] = q.loc, q.scale_diag           # [D], [D]
            if m.has_prior:
                p = m.p_z()
                out["kl"], _ = objectives_lib.kl_divergence(q, p, z)     # KL(q(z|x) || p(z))
                p_d = marginals(p)
                if _is_diagonal_gaussian(q) and _is_diagonal_gaussian(p):
                    out["kl_per_dim"] = objectives_lib.kl_per_dimension(q, p)   # closed form   [D]
                elif _is_diagonal_gaussian(q) and p_d is not None:
                    q_d = distrax.Normal(q.loc, q.scale_diag)                     # batch [D]
                    out["kl_per_dim"] = jnp.mean(q_d.log_prob(z) - p_d.log_prob(z), axis=0)   # Monte Carlo  [D]
            return out

        return self.model.apply(variables, method=terms)


def posterior_terms(model: model_lib.LatentVariableModel, variables: Any, xs: jax.Array, key: jax.Array, *,
                    num_samples: int = 1, batch_size: int | None = None, devices=None,
                    progress: bool = False) -> dict[str, jax.Array]:
    """Per-example statistics of q(z | x) for ``xs [N, *event]``.

    Returns ``[N, ...]`` arrays: ``mean [N, D]`` (E_q[z | x]; the code f(x) for a point mass),
    ``reconstruction [N]`` (E_q[log p(x | z)] from ``num_samples`` samples; log p(x | f(x)) for a
    point mass), and where they exist ``loc``/``scale [N, D]`` (diagonal Gaussian q),
    ``kl [N]`` (KL(q || p(z)), analytic where distrax has it) and ``kl_per_dim [N, D]``
    (factorised q and p).
    """
    fn = jax.tree_util.Partial(_PosteriorTerms(model, int(num_samples)), variables)
    b = int(batch_size or max(1, sharding_lib.default_rows() // (8 * int(num_samples))))
    return sharding_lib.map_examples(fn, jnp.asarray(xs), key, batch_size=b, devices=devices,
                                       progress=progress, desc="posterior")


def active_units(means: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Burda et al. (2016): unit d is active if A_d = Var_x E_q[z_d | x] > ``threshold``.

    Args:
      means: ``[N, D]`` posterior means E_q[z | x_n] (or codes f(x_n)).
    Returns:
      ``(A [D], active [D] bool)``.
    """
    a = np.var(np.asarray(means, np.float64), axis=0)
    return a, a > threshold


@dataclasses.dataclass(frozen=True)
class _AggregatePosterior:
    """log q(z | x_n) and log q(z) = log (1/N) sum_m q(z | x_m) at z ~ q(z | x_n) (diagonal Gaussians)."""

    num_samples: int
    chunk: int
    num_examples: int

    def __call__(self, components, params, key):
        loc_all, scale_all = components                               # [M_pad, D] each
        loc, scale = params                                           # [D], [D]
        z, log_q = distrax.MultivariateNormalDiag(loc, scale).sample_and_log_prob(
            seed=key, sample_shape=(self.num_samples,))               # [S, D], [S]

        def chunk(lse, c):
            lc = jax.lax.dynamic_slice_in_dim(loc_all, c * self.chunk, self.chunk)
            sc = jax.lax.dynamic_slice_in_dim(scale_all, c * self.chunk, self.chunk)
            lp = distrax.MultivariateNormalDiag(lc, sc).log_prob(z[:, None, :])     # [S, chunk]
            valid = c * self.chunk + jnp.arange(self.chunk) < self.num_examples
            lp = jnp.where(valid, lp, -jnp.inf)
            return jnp.logaddexp(lse, jax.nn.logsumexp(lp, axis=1)), None

        n_chunks = loc_all.shape[0] // self.chunk
        lse, _ = jax.lax.scan(chunk, jnp.full((self.num_samples,), -jnp.inf), jnp.arange(n_chunks))
        log_aggregate = lse - math.log(self.num_examples)              # log q(z)   [S]
        return {"log_q": jnp.mean(log_q), "log_aggregate": jnp.mean(log_aggregate)}


def mutual_information(loc: jax.Array, scale: jax.Array, key: jax.Array, *, num_samples: int = 1,
                       chunk_size: int = 1024, batch_size: int | None = None, devices=None,
                       progress: bool = False) -> dict[str, Any]:
    """I_q(x; z) under the aggregate posterior of N diagonal-Gaussian posteriors.

    I_q(x; z) = (1/N) sum_n E_{q(z|x_n)}[log q(z | x_n) - log q(z)],  q(z) = (1/N) sum_m q(z | x_m),

    estimated with ``num_samples`` draws z ~ q(z | x_n) per example; q(z) is evaluated exactly as
    the N-component mixture (O(N^2 D) work, chunked over components so memory stays O(N D)).
    The estimate lies in [0, log N] (as in He et al. 2019).

    Args:
      loc: ``[N, D]`` means of q(z | x_n).
      scale: ``[N, D]`` standard deviations of q(z | x_n).
    Returns:
      ``{"mutual_information": float, "per_example": [N] array, "upper_limit": log N}``.
    """
    loc = jnp.asarray(loc, jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    n = int(loc.shape[0])
    c = max(1, min(int(chunk_size), n))
    pad = -(-n // c) * c - n
    comps = (jnp.pad(loc, ((0, pad), (0, 0))), jnp.pad(scale, ((0, pad), (0, 0)), constant_values=1.0))
    fn = jax.tree_util.Partial(_AggregatePosterior(int(num_samples), c, n), comps)
    b = int(batch_size or max(1, sharding_lib.default_rows() // (int(num_samples) * c) * 16))
    out = sharding_lib.map_examples(fn, (loc, scale), key, batch_size=b, devices=devices,
                                      progress=progress, desc="I_q(x;z)")
    per_example = out["log_q"] - out["log_aggregate"]
    return {"mutual_information": float(jnp.mean(per_example)), "per_example": per_example,
            "upper_limit": math.log(n)}


def _summary(values) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return {"mean": float(v.mean()), "stderr": se}


def diagnose(model: model_lib.LatentVariableModel, variables: Any, xs: jax.Array, key: jax.Array | None = None, *,
             num_samples: int = 1, mi_samples: int = 1, active_unit_threshold: float = ACTIVE_UNIT_THRESHOLD,
             collapse_threshold: float = COLLAPSE_THRESHOLD, batch_size: int | None = None, devices=None,
             progress: bool = False) -> dict[str, Any]:
    """All diagnostics of the module docstring on ``xs [N, *event]``, as a JSON-able dict;
    ``diagnose(run, xs, key)`` takes a trained run's model and variables.

    Args:
      num_samples: z ~ q(z | x) per example for the distortion (and a Monte Carlo KL where no
        closed form exists).
      mi_samples: z ~ q(z | x) per example for I_q(x; z).
      active_unit_threshold: the 0.01 of Burda et al.
      collapse_threshold: nats; a unit whose mean KL(q(z_d|x) || p(z_d)) is below it is collapsed.
      key: ``fold_in(key, 0)`` for the posterior statistics, ``fold_in(key, 1)`` for I_q.
    Returns:
      ``latent_dim``, ``num_examples``, ``active_units`` (count), ``active_unit_variance``
      ([D] list), ``active`` ([D] bools), ``distortion`` ({mean, stderr}), and where defined
      ``kl_per_dim`` ([D] list), ``collapsed_units``, ``rate``, ``elbo``,
      ``mutual_information``, ``mutual_information_upper_limit``, ``marginal_kl``,
      ``posterior_collapse`` (bool) with ``collapse_reason``; ``undefined`` maps the others
      to the reason.
    """
    if key is None and hasattr(model, "model") and hasattr(model, "variables"):   # diagnose(run, xs, key)
        model, variables, xs, key = model.model, model.variables, variables, xs
    if key is None:
        raise TypeError("diagnose needs a PRNG key: diagnose(model, variables, xs, key) or diagnose(run, xs, key)")
    terms = posterior_terms(model, variables, xs, jax.random.fold_in(key, 0), num_samples=num_samples,
                            batch_size=batch_size, devices=devices, progress=progress)
    terms = jax.device_get(terms)
    means = np.asarray(terms["mean"], np.float64)
    n, d = means.shape
    variance, active = active_units(means, active_unit_threshold)
    out: dict[str, Any] = {
        "latent_dim": int(d),
        "num_examples": int(n),
        "active_unit_threshold": float(active_unit_threshold),
        "active_units": int(active.sum()),
        "active_unit_variance": variance.tolist(),
        "active": active.tolist(),
        "distortion": _summary(-np.asarray(terms["reconstruction"], np.float64)),
    }
    undefined: dict[str, str] = {}
    if model.is_autoencoder:
        for name in ("kl_per_dim", "rate", "marginal_kl", "posterior_collapse"):
            undefined[name] = KL_POINT_MASS
        undefined["mutual_information"] = MI_POINT_MASS
        out["undefined"] = undefined
        return out

    if "kl" in terms:
        rate = np.asarray(terms["kl"], np.float64)
        out["rate"] = _summary(rate)
        out["elbo"] = -(out["rate"]["mean"] + out["distortion"]["mean"])
    else:
        undefined["rate"] = NO_PRIOR
    collapsed = ~active
    if "kl_per_dim" in terms:
        kl_dims = np.asarray(terms["kl_per_dim"], np.float64).mean(0)
        out["kl_per_dim"] = kl_dims.tolist()
        out["collapse_threshold"] = float(collapse_threshold)
        collapsed = kl_dims < collapse_threshold
        out["collapsed_units"] = int(collapsed.sum())
    elif "kl" in terms:
        undefined["kl_per_dim"] = "undefined: q(z|x) or p(z) does not factorise over the units"
    else:
        undefined["kl_per_dim"] = NO_PRIOR

    if "loc" in terms:
        mi = mutual_information(terms["loc"], terms["scale"], jax.random.fold_in(key, 1), num_samples=mi_samples,
                                devices=devices, progress=progress)
        out["mutual_information"] = mi["mutual_information"]
        out["mutual_information_upper_limit"] = mi["upper_limit"]
        if "rate" in out:
            out["marginal_kl"] = out["rate"]["mean"] - mi["mutual_information"]
    else:
        undefined["mutual_information"] = "undefined here: needs a diagonal-Gaussian q(z|x)"

    if "rate" in out or "kl_per_dim" in out:
        complete = bool(collapsed.all()) or out["active_units"] == 0
        out["posterior_collapse"] = complete
        if out["active_units"] == 0:
            reason = f"no active unit (Var_x E_q[z_d] <= {active_unit_threshold} for all {d})"
        elif complete:
            reason = f"every unit has mean KL(q(z_d|x) || p(z_d)) < {collapse_threshold} nats"
        else:
            k = int(collapsed.sum())
            if "kl_per_dim" in out:
                reason = (f"{d - k} of {d} units have mean KL(q(z_d|x) || p(z_d)) >= {collapse_threshold} nats"
                          + (f"; {k} collapsed to the prior" if k else ""))
            else:
                reason = f"{d - k} of {d} units active" + (f"; {k} inactive" if k else "")
        out["collapse_reason"] = reason
    if undefined:
        out["undefined"] = undefined
    return out
