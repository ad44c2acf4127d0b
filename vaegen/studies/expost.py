"""Making an autoencoder generative after training: a density fitted to its codes becomes p(z).

An autoencoder has a decoder p(x | z) and a deterministic encoder f, but no p(z), hence no
p(x) = E_p(z)[p(x | z)] and nothing to sample.  Ghosh et al. (2020) supply one *ex post*: fit a
mixture of Gaussians to the training codes {f(x_n)} (10 full-covariance components) and use it
as the prior.  The result is an ordinary :class:`vaegen.LatentVariableModel`,

    p(z) = sum_k pi_k N(z; mu_k, Sigma_k)        (fitted to the codes; :class:`MixturePrior`)
    p(x | z)                                    (the autoencoder's decoder, unchanged)

so it is sampled ancestrally (z ~ p(z), x ~ p(x | z)) and its log p(x) is estimated by
importance sampling like any latent-variable model's.

Importance sampling needs a proposal with a density, and the autoencoder's q(z|x) = delta(z -
f(x)) has none.  :class:`CodeProposal` is the proposal used instead: an equal-weight *scale
mixture* of Gaussians centred on the code,

    r(z | x) = 1/J sum_j N(z; f(x), diag((s_j sigma)^2)),   s = (0.01, 0.03, 0.1, 0.3, 1),

with sigma the per-dimension standard deviation of the training codes.  The decoder of an
autoencoder was only trained at z = f(x), so the width of p(z | x) is unknown; the mixture
spends 1/J of the samples at each width and is never much worse than the best single width
(at most log J nats).  Any proposal gives a stochastic lower bound on log p(x), so the
estimate is conservative.  A model whose q(z|x) has a density (a VAE) keeps its own q.

The same machinery attaches N(0, I) to an autoencoder (``prior="standard_normal"``): the "AE
sampled from a Gaussian" is then a well-defined generative model too, whose log p(x) and
samples show what goes wrong without a fitted prior.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaegen import sharding as sharding_lib
from vaegen.blocks import posteriors as posteriors_lib
from vaegen.blocks import priors as priors_lib
from vaegen.data import binarization
from vaegen.data import splits as splits_lib
from vaegen.model import latent as latent_lib
from vaegen.errors import NO_LATENT_MESSAGE, NoLatentError

DEFAULT_RELATIVE_SCALES = (0.01, 0.03, 0.1, 0.3, 1.0)
PRIORS = ("expost_mixture", "standard_normal")


# --- the fitted mixture ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Mixture:
    """A mixture of K full-covariance Gaussians over z [D] (numpy, float64).

    Attributes:
      weights: ``[K]`` mixing proportions (sum to 1).
      means: ``[K, D]``.
      scale_tril: ``[K, D, D]`` lower Cholesky factors of the covariances.
      info: how it was fitted (JSON-able).
    """

    weights: np.ndarray
    means: np.ndarray
    scale_tril: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def num_components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def latent_dim(self) -> int:
        return int(self.means.shape[1])

    def params(self) -> dict[str, jax.Array]:
        """The parameters of :class:`MixturePrior` (float32)."""
        return {"logits": jnp.asarray(np.log(np.maximum(self.weights, 1e-30)), jnp.float32),
                "loc": jnp.asarray(self.means, jnp.float32),
                "scale_tril": jnp.asarray(self.scale_tril, jnp.float32)}

    def distribution(self) -> distrax.Distribution:
        return _mixture(**self.params())

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Writes ``mixture.npz`` and ``mixture.json`` (the fit's settings) into ``directory``."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / ".mixture.tmp.npz"
        np.savez(tmp, weights=self.weights, means=self.means, scale_tril=self.scale_tril)
        os.replace(tmp, directory / "mixture.npz")
        (directory / "mixture.json").write_text(json.dumps(self.info, indent=2, default=float) + "\n")
        return directory / "mixture.npz"

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Mixture":
        directory = pathlib.Path(directory)
        with np.load(directory / "mixture.npz", allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in ("weights", "means", "scale_tril")}
        info = json.loads((directory / "mixture.json").read_text()) if (directory / "mixture.json").exists() else {}
        return cls(**arrays, info=info)


def fit_mixture(codes: np.ndarray, *, num_components: int = 10, covariance_type: str = "full", seed: int = 0,
                max_iter: int = 500, bayesian: bool = True, reg_covar: float = 1e-6,
                blas_threads: int | None = 1) -> Mixture:
    """Fits a mixture of Gaussians to ``codes [N, D]`` with scikit-learn.

    ``bayesian=True`` is ``BayesianGaussianMixture`` (variational, Dirichlet-process weights:
    unneeded components get ~0 weight), as in Ghosh et al. (2020); ``False`` is maximum-likelihood
    EM (``GaussianMixture``).  ``covariance_type``: ``full`` or ``diag``.  ``blas_threads``: BLAS
    threads during the fit (None: the library default).
    """
    from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

    codes = np.asarray(codes, np.float64)
    if codes.ndim != 2 or codes.shape[0] < 2:
        raise ValueError(f"codes must be [N >= 2, D], got shape {codes.shape}")
    if not np.all(np.isfinite(codes)):
        raise ValueError("codes contain NaN or infinite values")
    if covariance_type not in ("full", "diag"):
        raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}")
    k = min(int(num_components), codes.shape[0])
    cls = BayesianGaussianMixture if bayesian else GaussianMixture
    gm = cls(n_components=k, covariance_type=covariance_type, random_state=seed, max_iter=max_iter,
             reg_covar=reg_covar, init_params="kmeans")
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the fit is many small [D, D] products, which multi-threaded BLAS slows down
    # several-fold when the cores are shared (with JAX's own threads or other jobs).
    with warnings.catch_warnings(), threadpool_limits(limits=blas_threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(codes)
    cov = gm.covariances_
    if covariance_type == "diag":
        cov = np.stack([np.diag(c) for c in cov])
    scale_tril = np.linalg.cholesky(cov)
    weights = np.asarray(gm.weights_, np.float64)
    weights = weights / weights.sum()
    info = {"estimator": cls.__name__, "num_components": k, "covariance_type": covariance_type, "seed": seed,
            "num_codes": int(codes.shape[0]), "latent_dim": int(codes.shape[1]), "converged": bool(gm.converged_),
            "n_iter": int(gm.n_iter_), "max_iter": max_iter, "reg_covar": reg_covar,
            "effective_components": float(1.0 / np.sum(weights**2)),
            "mean_log_density_of_codes": float(gm.score(codes))}
    return Mixture(weights=weights, means=np.asarray(gm.means_, np.float64), scale_tril=scale_tril, info=info)


def _mixture(logits: jax.Array, loc: jax.Array, scale_tril: jax.Array) -> distrax.Distribution:
    return distrax.MixtureSameFamily(distrax.Categorical(logits=logits),
                                     distrax.MultivariateNormalTri(loc=loc, scale_tri=scale_tril, is_lower=True))


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, L_k L_k^T): event [D].  Parameters ``logits [K]``, ``loc [K, D]``,
    ``scale_tril [K, D, D]`` -- set from a :class:`Mixture` (:meth:`Mixture.params`), not trained."""

    latent_dim: int
    num_components: int = 10

    @nn.compact
    def __call__(self, posterior: Any = None) -> distrax.Distribution:
        del posterior
        k, d = self.num_components, self.latent_dim
        logits = self.param("logits", nn.initializers.zeros, (k,))
        loc = self.param("loc", nn.initializers.zeros, (k, d))
        scale_tril = self.param("scale_tril", lambda key, shape: jnp.broadcast_to(jnp.eye(d), shape), (k, d, d))
        return _mixture(logits, loc, scale_tril)


class CodeProposal(nn.Module):
    """r(z | x) = 1/J sum_j N(z; f(x), diag((s_j sigma)^2)): an importance-sampling proposal around
    an autoencoder's code (see the module docstring).

    Same ``encoder`` and ``loc`` head as :class:`vaegen.blocks.posteriors.PointMass`, so an autoencoder's
    parameters drop in; ``code_scale [D]`` (sigma) is a parameter set from the codes.
    """

    encoder: nn.Module
    latent_dim: int
    relative_scales: tuple[float, ...] = DEFAULT_RELATIVE_SCALES

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:
        loc = nn.Dense(self.latent_dim, name="loc")(self.encoder(x))                 # f(x)   [..., D]
        sigma = self.param("code_scale", nn.initializers.ones, (self.latent_dim,))  # [D]
        s = jnp.asarray(self.relative_scales, jnp.float32)                           # [J]
        j = s.shape[0]
        scales = s[:, None] * sigma[None, :]                                         # [J, D]
        locs = jnp.broadcast_to(loc[..., None, :], loc.shape[:-1] + (j, self.latent_dim))  # [..., J, D]
        scales = jnp.broadcast_to(scales, locs.shape)
        return distrax.MixtureSameFamily(distrax.Categorical(logits=jnp.zeros(locs.shape[:-1])),
                                         distrax.MultivariateNormalDiag(locs, scales))


# --- codes ---------------------------------------------------------------------------------------

def training_images(run, *, max_examples: int = 0, seed: int = 0) -> jax.Array:
    """The run's training images as its model sees them (one binarization draw with ``seed`` under a
    dynamic protocol): float32 ``[N, *event]``, the first ``max_examples`` (0 = all)."""
    data = run.spec.data
    x_u8 = run.data().train
    if max_examples:
        x_u8 = x_u8[:max_examples]
    stored = splits_lib.stored_split(data, x_u8, "train")
    return binarization.to_float(jax.random.key(seed), jnp.asarray(stored), splits_lib.split_protocol(data, "train"))


def encode_codes(model: Any, variables: Any, x: jax.Array, key: jax.Array, *, sample: bool = True,
                 batch_size: int = 1000) -> np.ndarray:
    """Codes of ``x [N, *event]``: draws z_n ~ q(z | x_n) (samples of the aggregate posterior
    q(z) = E_x q(z | x)) if ``sample`` and q has a density, else E_q[z | x_n] (f(x_n) for an
    autoencoder).  Example ``n`` uses ``fold_in(key, n)``.  Returns ``[N, D]``."""
    x = jnp.asarray(x)
    fn = jax.tree_util.Partial(_Code(model, bool(sample and not model.is_autoencoder)), variables)
    return np.asarray(sharding_lib.map_examples(fn, x, key, batch_size=min(batch_size, x.shape[0])))


@dataclasses.dataclass(frozen=True)
class _Code:
    """One example's code: a draw z ~ q(z | x) or the mean E_q[z | x]."""

    model: Any
    draw: bool

    def __call__(self, variables, x, key):
        q = self.model.apply(variables, x, method="q_z_given_x")
        return q.sample(seed=key) if self.draw else q.mean()


# --- the generative model ----------------------------------------------------------------------

def generative(run, prior: str = "expost_mixture", *, mixture: Mixture | None = None,
               code_scale: np.ndarray | None = None,
               relative_scales: Sequence[float] = DEFAULT_RELATIVE_SCALES):
    """``run`` (a :class:`vaegen.Run`) with the prior ``prior`` attached: a new ``Run`` whose model
    is a full latent-variable model (sample, log_joint and :func:`vaegen.evaluate` work).

    Args:
      prior: ``expost_mixture`` (``mixture`` required) or ``standard_normal``.
      code_scale: sigma ``[D]`` of :class:`CodeProposal` (needed when q is a point mass): the
        per-dimension standard deviation of the training codes.
      relative_scales: the s_j of :class:`CodeProposal`.

    The likelihood p(x | z) and the encoder are the run's, parameter for parameter.  A point-mass
    q(z|x) is replaced by :class:`CodeProposal` (the proposal for importance sampling); a q with a
    density is kept.
    """
    base = run.model
    if not run.has_latents:
        raise NoLatentError(NO_LATENT_MESSAGE)
    d = int(run.spec.model.latent_dim)
    params = dict(run.variables["params"])
    if prior == "expost_mixture":
        if mixture is None:
            raise ValueError("prior='expost_mixture' needs a fitted mixture (fit_mixture)")
        if mixture.latent_dim != d:
            raise ValueError(f"the mixture is over {mixture.latent_dim} dimensions, the model's z over {d}")
        p = MixturePrior(latent_dim=d, num_components=mixture.num_components)
        params["prior"] = mixture.params()
    elif prior == "standard_normal":
        p = priors_lib.StandardNormal(latent_dim=d)
        params.pop("prior", None)
    else:
        raise ValueError(f"unknown prior {prior!r}; choose one of {', '.join(PRIORS)}")
    posterior = base.posterior
    if posteriors_lib.is_point_mass(posterior):
        if code_scale is None:
            raise ValueError("an autoencoder needs code_scale (std of its codes) for the proposal around f(x)")
        posterior = CodeProposal(encoder=posterior.encoder, latent_dim=d,
                                 relative_scales=tuple(float(s) for s in relative_scales))
        params["posterior"] = {**params["posterior"],
                               "code_scale": jnp.asarray(np.maximum(np.asarray(code_scale, np.float64), 1e-6), jnp.float32)}
    model = latent_lib.LatentVariableModel(prior=p, likelihood=base.likelihood, posterior=posterior)
    return dataclasses.replace(run, model=model, variables={**run.variables, "params": params})


def fit(run, *, num_components: int = 10, max_codes: int = 20000, seed: int = 0, bayesian: bool = True,
        covariance_type: str = "full", directory: str | os.PathLike | None = None):
    """Fits the ex-post mixture to ``run``'s training codes and returns ``(generative_run, mixture,
    codes)``; saves the mixture in ``directory`` (default ``<workdir>/expost``) and reuses a saved
    one fitted with the same settings."""
    if not run.has_latents:
        raise NoLatentError(NO_LATENT_MESSAGE)
    directory = pathlib.Path(directory) if directory is not None else pathlib.Path(run.workdir) / "expost"
    x = training_images(run, max_examples=max_codes, seed=seed)
    codes = encode_codes(run.model, run.variables, x, jax.random.key(seed))
    mixture = fit_or_load(codes, directory, num_components=num_components, seed=seed, bayesian=bayesian,
                          covariance_type=covariance_type)
    return generative(run, "expost_mixture", mixture=mixture, code_scale=codes.std(0)), mixture, codes


def fit_or_load(codes: np.ndarray, directory: str | os.PathLike, *, num_components: int = 10, seed: int = 0,
                bayesian: bool = True, covariance_type: str = "full") -> Mixture:
    """:func:`fit_mixture`, reusing the mixture saved in ``directory`` if it was fitted to the very same
    codes (by hash) with the same settings; otherwise fits and saves it there."""
    directory = pathlib.Path(directory)
    codes = np.ascontiguousarray(codes, np.float32)
    settings = {"num_components": int(num_components), "seed": int(seed), "bayesian": bool(bayesian),
                "covariance_type": covariance_type, "codes_sha256": hashlib.sha256(codes.tobytes()).hexdigest()[:16],
                "codes_shape": list(codes.shape)}
    if (directory / "mixture.npz").exists():
        stored = Mixture.load(directory)
        if stored.info.get("settings") == settings:
            return stored
    mixture = fit_mixture(codes, num_components=num_components, covariance_type=covariance_type, seed=seed,
                          bayesian=bayesian)
    mixture = dataclasses.replace(mixture, info={**mixture.info, "settings": settings})
    mixture.save(directory)
    return mixture
