"""A linear-Gaussian latent-variable model, whose every quantity has a closed form.

    p(z)      = N(z; 0, I_d)
    p(x | z)  = N(x; W z + b, s^2 I_D)

    p(x)      = N(x; b, W W^T + s^2 I_D)
    p(z | x)  = N(z; m(x), S),  S = (I + W^T W / s^2)^-1,  m(x) = S W^T (x - b) / s^2

The best *diagonal* Gaussian q(z | x) (minimising KL(q || p(z | x)), i.e. maximising the ELBO)
has mean m(x) and variances 1 / diag(S^-1) = 1 / (1 + diag(W^T W) / s^2); for any Gaussian q,
log p(x) - ELBO(q) = KL(q || p(z | x)).

:meth:`LinearGaussian.model` builds the same model as a :class:`vaegen.LatentVariableModel`
(identity trunks, linear heads), so every bound and estimator in vaegen can be checked against
these formulas.  All values are in nats.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from vaegen.blocks import likelihoods as likelihoods
from vaegen.blocks import networks as networks
from vaegen.blocks import posteriors as posteriors
from vaegen.blocks import priors as priors
from vaegen.model.latent import LatentVariableModel


@dataclasses.dataclass(frozen=True)
class LinearGaussian:
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D).

    Attributes:
      W: ``[D, d]`` loading matrix.
      b: ``[D]`` offset.
      s: observation noise standard deviation.
    """

    W: np.ndarray
    b: np.ndarray
    s: float

    @classmethod
    def random(cls, key: jax.Array, data_dim: int, latent_dim: int, s: float = 0.5, scale: float = 1.0) -> "LinearGaussian":
        kw, kb = jax.random.split(key)
        W = scale * jax.random.normal(kw, (data_dim, latent_dim)) / math.sqrt(latent_dim)
        b = jax.random.normal(kb, (data_dim,))
        return cls(np.asarray(W, np.float64), np.asarray(b, np.float64), float(s))

    @property
    def data_dim(self) -> int:
        return self.W.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    # --- closed forms (float64 numpy) ----------------------------------------------------
    def marginal_covariance(self) -> np.ndarray:
        return self.W @ self.W.T + self.s**2 * np.eye(self.data_dim)

    def log_marginal(self, x: np.ndarray) -> np.ndarray:
        """Exact log p(x), ``[N]`` for ``x [N, D]``."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        C = self.marginal_covariance()
        L = np.linalg.cholesky(C)
        r = np.linalg.solve(L, (x - self.b).T)  # [D, N]
        logdet = 2 * np.sum(np.log(np.diag(L)))
        return -0.5 * (np.sum(r**2, 0) + logdet + self.data_dim * math.log(2 * math.pi))

    def posterior_covariance(self) -> np.ndarray:
        """S = (I + W^T W / s^2)^-1, the same for every x."""
        return np.linalg.inv(np.eye(self.latent_dim) + self.W.T @ self.W / self.s**2)

    def posterior_mean(self, x: np.ndarray) -> np.ndarray:
        """m(x) = S W^T (x - b) / s^2, ``[N, d]``."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        return (x - self.b) @ self.W @ self.posterior_covariance().T / self.s**2

    def optimal_diagonal_variance(self) -> np.ndarray:
        """Variances of the best diagonal q: 1 / diag(S^-1), ``[d]``."""
        return 1.0 / (1.0 + np.sum(self.W**2, 0) / self.s**2)

    def kl_to_posterior(self, x: np.ndarray, q_mean: np.ndarray, q_var: np.ndarray) -> np.ndarray:
        """KL(N(q_mean, diag q_var) || p(z | x)), ``[N]``: the ELBO's gap to log p(x)."""
        S = self.posterior_covariance()
        P = np.linalg.inv(S)
        m = self.posterior_mean(x)
        q_mean = np.atleast_2d(np.asarray(q_mean, np.float64))
        q_var = np.broadcast_to(np.asarray(q_var, np.float64), q_mean.shape)
        d = self.latent_dim
        diff = m - q_mean
        trace = np.sum(np.diag(P) * q_var, -1)
        maha = np.einsum("ni,ij,nj->n", diff, P, diff)
        logdet_S = np.linalg.slogdet(S)[1]
        return 0.5 * (trace + maha - d + logdet_S - np.sum(np.log(q_var), -1))

    def elbo(self, x: np.ndarray, q_mean: np.ndarray, q_var: np.ndarray) -> np.ndarray:
        """Exact ELBO of a diagonal Gaussian q: log p(x) - KL(q || p(z | x)), ``[N]``."""
        return self.log_marginal(x) - self.kl_to_posterior(x, q_mean, q_var)

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        """x ~ p(x), ``[n, D]`` (float64)."""
        kz, kx = jax.random.split(key)
        z = np.asarray(jax.random.normal(kz, (n, self.latent_dim)), np.float64)
        eps = np.asarray(jax.random.normal(kx, (n, self.data_dim)), np.float64)
        return z @ self.W.T + self.b + self.s * eps

    # --- the same model as a vaegen LatentVariableModel ----------------------------------
    def model(self) -> LatentVariableModel:
        """The model with a linear amortized diagonal-Gaussian q(z | x) = N(A x + c, diag(exp(2 l)))."""
        return LatentVariableModel(
            prior=priors.StandardNormal(latent_dim=self.latent_dim),
            likelihood=likelihoods.Gaussian(decoder=networks.MLP(networks.MLPSettings(hidden=())),
                                            event_shape=(self.data_dim,),
                                            settings=likelihoods.GaussianLikelihoodSettings(scale="fixed",
                                                                                            fixed_scale=self.s)),
            posterior=posteriors.DiagonalGaussian(encoder=networks.MLP(networks.MLPSettings(hidden=())),
                                                  latent_dim=self.latent_dim),
        )

    def variables(self, A: np.ndarray | None = None, c: np.ndarray | None = None, log_scale: np.ndarray | None = None):
        """Parameters of :meth:`model`: the generative part is exactly (W, b, s); q(z | x) is
        ``N(A x + c, diag(exp(log_scale))^2)``, by default the *optimal diagonal* q (A, c from the
        exact posterior mean, variances from :meth:`optimal_diagonal_variance`)."""
        S = self.posterior_covariance()
        if A is None:
            A = S @ self.W.T / self.s**2                      # m(x) = A x + c
        if c is None:
            c = -A @ self.b
        if log_scale is None:
            log_scale = 0.5 * np.log(self.optimal_diagonal_variance())
        bounds = self.model().posterior.settings
        raw = posteriors.soft_clip_inverse(jnp.asarray(log_scale, jnp.float32), bounds.min_log_scale,
                                           bounds.max_log_scale)
        f32 = lambda a: jnp.asarray(a, jnp.float32)
        return {"params": {
            "likelihood": {"loc": {"kernel": f32(self.W.T), "bias": f32(self.b)}},
            "posterior": {
                "loc": {"kernel": f32(np.asarray(A).T), "bias": f32(c)},
                "log_scale": {"kernel": jnp.zeros((self.data_dim, self.latent_dim), jnp.float32),
                              "bias": f32(raw)},
            },
        }}
