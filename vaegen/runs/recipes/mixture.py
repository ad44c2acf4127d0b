"""The ex-post Gaussian mixture: a density fitted to an autoencoder's codes becomes its p(z).

Ghosh et al. (2020) make a deterministic autoencoder generative *ex post*: fit a mixture of
Gaussians to the training codes {f(x_n)} (10 full-covariance components, scikit-learn's
``BayesianGaussianMixture``) and use it as the prior.  The result is an ordinary latent-variable
model,

    p(z) = sum_k pi_k N(z; mu_k, Sigma_k)        (fitted to the codes; :class:`MixturePrior`)
    p(x | z)                                    (the autoencoder's decoder, unchanged)

sampled ancestrally (z ~ p(z), x ~ p(x | z)), whose log p(x) is estimated by importance sampling
like any latent-variable model's.  An autoencoder's q(z|x) = delta(z - f(x)) has no density, so the
proposal is a scale mixture of Gaussians centred on the code
(:class:`vaegen.blocks.posteriors.CodeProposal`); p(z) is exact, so the estimate is a stochastic
lower bound on log p(x).

The fit lives in ``<workdir>/expost/`` (``mixture.npz``, ``mixture.json``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import time
import warnings
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture, GaussianMixture
from threadpoolctl import threadpool_limits

from vaegen.errors import RecipeError
from vaegen.registry import Settings, setting
from vaegen.runs import codes as codes_lib
from vaegen.runs.recipes.store import keep_aside, read_json, read_npz, write_json, write_npz
from vaegen.runs.recipes.base import EXPOST_DIR, Fit, LogPx, Recipe, register_recipe, with_prior
from vaegen.runs.recipes.trained import EXACT_P_Z
from vaegen.runs.run import Run


@dataclasses.dataclass(frozen=True)
class FittedMixture:
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
        """Writes ``mixture.npz`` and ``mixture.json`` (the fit's settings) into ``directory``, each
        through a temporary file and a rename (a failed write leaves the previous files intact)."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_npz(directory / "mixture.npz", weights=self.weights, means=self.means, scale_tril=self.scale_tril)
        write_json(directory / "mixture.json", self.info)
        return directory / "mixture.npz"

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "FittedMixture":
        """The mixture saved in ``directory`` (one line naming the file if it is damaged)."""
        directory = pathlib.Path(directory)
        arrays = read_npz(directory / "mixture.npz", ("weights", "means", "scale_tril"),
                                remedy="fit it again with `vaegen expost --refit`")
        info_path = directory / "mixture.json"
        info = read_json(info_path, remedy="fit it again with `vaegen expost --refit`") if info_path.exists() else {}
        return cls(**arrays, info=info)


def fit_mixture(codes: np.ndarray, *, num_components: int = 10, covariance_type: str = "full", seed: int = 0,
                max_iter: int = 500, bayesian: bool = True, reg_covar: float = 1e-6,
                blas_threads: int | None = 1) -> FittedMixture:
    """Fits a mixture of Gaussians to ``codes [N, D]`` with scikit-learn.

    ``bayesian=True`` is ``BayesianGaussianMixture`` (variational, Dirichlet-process weights:
    unneeded components get ~0 weight), as in Ghosh et al. (2020); ``False`` is maximum-likelihood
    EM (``GaussianMixture``).  ``covariance_type``: ``full`` or ``diag``.  ``blas_threads``: BLAS
    threads during the fit (None: the library default).
    """
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
    return FittedMixture(weights=weights, means=np.asarray(gm.means_, np.float64), scale_tril=scale_tril, info=info)


def _mixture(logits: jax.Array, loc: jax.Array, scale_tril: jax.Array) -> distrax.Distribution:
    return distrax.MixtureSameFamily(distrax.Categorical(logits=logits),
                                     distrax.MultivariateNormalTri(loc=loc, scale_tri=scale_tril, is_lower=True))


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, L_k L_k^T): event [D].  Parameters ``logits [K]``, ``loc [K, D]``,
    ``scale_tril [K, D, D]`` -- set from a :class:`FittedMixture` (:meth:`FittedMixture.params`), not trained."""

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


@dataclasses.dataclass(frozen=True)
class MixtureRecipeSettings(Settings):
    components: int = setting(10, "K mixture components (a Bayesian fit gives unneeded ones ~0 weight)", gt=0)
    max_codes: int = setting(20000, "codes of the first max_codes training images to fit to", gt=1)
    seed: int = setting(0, "seed of the codes' binarization draw, of q's draws and of the fit", ge=0)
    bayesian: bool = setting(True, "BayesianGaussianMixture (Dirichlet-process weights) instead of EM's GaussianMixture")
    covariance_type: str = setting("full", "full or diagonal covariances", choices=("full", "diag"))


def fit_settings_record(codes: np.ndarray, settings: MixtureRecipeSettings) -> dict[str, Any]:
    """What a saved mixture was fitted to and with: compared on reuse (the codes by hash)."""
    codes = np.ascontiguousarray(codes, np.float32)
    return {"num_components": int(settings.components), "seed": int(settings.seed), "bayesian": bool(settings.bayesian),
            "covariance_type": settings.covariance_type,
            "codes_sha256": hashlib.sha256(codes.tobytes()).hexdigest()[:16], "codes_shape": list(codes.shape)}


def fit_or_load(codes: np.ndarray, directory: str | os.PathLike, settings: MixtureRecipeSettings, *,
                refit: bool = True) -> FittedMixture:
    """:func:`fit_mixture` of ``codes [N, D]`` with ``settings``, reusing the mixture saved in
    ``directory`` if it was fitted to the very same codes (by hash) with the same settings.  A saved
    mixture of other codes or settings is kept aside (``mixture.<n>.npz``) and replaced when
    ``refit``, else refused with one line (:class:`vaegen.errors.RecipeError`)."""
    directory = pathlib.Path(directory)
    record = fit_settings_record(codes, settings)
    if (directory / "mixture.npz").exists():
        stored = FittedMixture.read(directory)
        if stored.info.get("settings") == record:
            return stored
        if not refit:
            before = stored.info.get("settings", {})
            changed = [f"{k}: {before.get(k)!r} there, {v!r} now" for k, v in record.items() if before.get(k) != v]
            raise RecipeError(f"{directory / 'mixture.npz'} holds a mixture fitted with other settings or codes "
                              f"({'; '.join(changed) or 'unrecorded settings'}); add --refit to fit anew (the old one "
                              "is kept beside it)")
        keep_aside(directory, ("mixture.npz", "mixture.json"))
    t0 = time.perf_counter()
    mixture = fit_mixture(codes, num_components=settings.components, covariance_type=settings.covariance_type,
                          seed=settings.seed, bayesian=settings.bayesian)
    mixture = dataclasses.replace(mixture, info={**mixture.info, "settings": record,
                                                 "fit_seconds": time.perf_counter() - t0})
    mixture.save(directory)
    return mixture


@register_recipe("gmm", settings=MixtureRecipeSettings, aliases=("expost_mixture",), label="ex-post GMM",
                 samples_from="GMM on codes", tag="gmm", log_px=LogPx.STOCHASTIC_LOWER_BOUND, log_px_meaning=EXACT_P_Z,
                 needs=("continuous_codes",), fitted=True)
class GaussianMixtureRecipe(Recipe):
    """p(z) = sum_k pi_k N(z; mu_k, Sigma_k): a Gaussian mixture fitted to the training codes after training
    (Ghosh et al. 2020; scikit-learn's BayesianGaussianMixture, full covariances)."""

    def directory(self, workdir: str | os.PathLike) -> pathlib.Path:
        return pathlib.Path(workdir) / EXPOST_DIR

    def _codes(self, run: Run) -> np.ndarray:
        s = self.settings
        x = codes_lib.training_images(run, max_examples=s.max_codes, seed=s.seed)
        return codes_lib.encode_codes(run.model, run.variables, x, jax.random.key(s.seed))

    def fit(self, run: Run, *, directory: str | os.PathLike | None = None, codes: np.ndarray | None = None,
            refit: bool = False) -> Fit:
        self.check(run)
        directory = pathlib.Path(directory) if directory is not None else self.directory(run.workdir)
        if codes is None:
            codes, refit_default = self._codes(run), refit
        else:
            codes, refit_default = np.asarray(codes)[: self.settings.max_codes], True   # a study's own codes
        mixture = fit_or_load(codes, directory, self.settings, refit=refit_default)
        self.record_settings(directory)
        return Fit(self.name, directory, mixture, mixture.info, code_scale=codes.std(0))

    def load_fit(self, run: Run, *, directory: str | os.PathLike | None = None) -> Fit:
        self.check(run)
        directory = pathlib.Path(directory) if directory is not None else self.directory(run.workdir)
        if not (directory / "mixture.npz").exists():
            raise FileNotFoundError(f"{directory} holds no fitted mixture; fit one with "
                                    f"`vaegen expost --workdir {run.workdir} --density {self.name}`")
        mixture = FittedMixture.read(directory)
        settings = mixture.info.get("settings", {})
        seed = int(settings.get("seed", 0))
        x = codes_lib.training_images(run, max_examples=int(settings.get("codes_shape", [20000])[0]), seed=seed)
        code_scale = codes_lib.encode_codes(run.model, run.variables, x, jax.random.key(seed)).std(0)
        return Fit(self.name, directory, mixture, mixture.info, code_scale=code_scale)

    def describe_fit(self, fit: Fit) -> str:
        info = fit.info
        return (f"fitted {info['estimator']} ({info['num_components']} components, {info['covariance_type']} "
                f"covariance) to {info['num_codes']} training codes; effective components "
                f"{info['effective_components']:.1f}; saved in {fit.directory}")

    def attach(self, run: Run, fit: Fit, *, code_scale: np.ndarray | None = None) -> Run:
        self.check(run)
        mixture: FittedMixture = fit.value
        d = int(run.spec.model.latent_dim)
        if mixture.latent_dim != d:
            raise RecipeError(f"the mixture in {fit.directory} is over {mixture.latent_dim} dimensions, the model's z "
                              f"over {d}: it was fitted to another run; fit one to this run with --refit")
        prior = MixturePrior(latent_dim=d, num_components=mixture.num_components)
        scale = code_scale if code_scale is not None else fit.code_scale
        model, variables = with_prior(run, prior, mixture.params(), code_scale=scale)
        return dataclasses.replace(run, model=model, variables=variables, recipe=self.selected)
