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

Stronger densities are learned (:func:`fit_learned`, :func:`fit_density`, :func:`load_learned`):
a normalizing flow, a second-stage VAE and a latent diffusion model, each a registered prior
component (:mod:`vaegen.blocks.densities`) fitted to the codes by vaegen's trainer, and plugged
in the same way.  What the reported log p(x) then is (:data:`LOG_PX_MEANING`):

* GMM, flow: p(z) exact, so importance sampling gives a stochastic lower bound on log p(x).
* second-stage VAE: p(z) is an unbiased importance-sampling estimate p^(z) (its own latent u),
  independent of the outer draws given z.  The outer average 1/K sum_k p(x | z_k) p^(z_k) / r(z_k)
  is then still unbiased for p(x), and by Jensen E[log of it] <= log p(x): a lower bound in
  expectation (not for every draw).
* diffusion: p(z) is replaced by exp(L^(z)), L^ a Monte Carlo estimate of the variational bound
  L(z) <= log p(z).  With the exact L the result would be a stochastic lower bound; with L^,
  E[exp L^] = exp(L) E[exp(L^ - L)] >= exp(L), by about exp(Var(L^) / 2), so it is a lower bound
  up to that term -- ``log_pz_mc_std`` in the fit's record gives its size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
from typing import Any, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaegen import sharding as sharding_lib
from vaegen.blocks import densities as densities_lib
from vaegen.blocks import posteriors as posteriors_lib
from vaegen.blocks import priors as priors_lib
from vaegen.config import schema as config_schema
from vaegen.data import binarization
from vaegen.data import checks as checks_lib
from vaegen.data import datasets
from vaegen.data import splits as splits_lib
from vaegen.model import latent as latent_lib
from vaegen.errors import NO_LATENT_MESSAGE, ConfigError, DataError, NoLatentError
from vaegen.runs import run as run_lib
from vaegen.train import checkpoint as checkpoint_lib
from vaegen.train import trainer as trainer_lib
from vaegen.train import workdir as trainer_workdir

DEFAULT_RELATIVE_SCALES = posteriors_lib.DEFAULT_RELATIVE_SCALES
CodeProposal = posteriors_lib.CodeProposal
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
               density: "DensityFit | None" = None, code_scale: np.ndarray | None = None,
               relative_scales: Sequence[float] = DEFAULT_RELATIVE_SCALES):
    """``run`` (a :class:`vaegen.Run`) with the prior ``prior`` attached: a new ``Run`` whose model
    is a full latent-variable model (sample, log_joint and :func:`vaegen.evaluate` work).

    Args:
      prior: ``expost_mixture`` (``mixture`` required), ``standard_normal``, or a learned density
        ``flow``, ``two_stage``, ``diffusion`` (``density`` required: :func:`fit_density`).
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
    elif prior in LEARNED_DENSITIES:
        if density is None or density.name != prior:
            raise ValueError(f"prior={prior!r} needs the fitted {prior} density (fit_density)")
        if int(density.spec.model.latent_dim) != d:
            raise ValueError(f"the density is over {density.spec.model.latent_dim} dimensions, the model's z over {d}")
        p = density.prior_module()
        params["prior"] = density.variables["params"]["prior"]
    else:
        raise ValueError(f"unknown prior {prior!r}; choose one of {', '.join(PRIORS + LEARNED_DENSITIES)}")
    posterior = base.posterior
    if posteriors_lib.is_point_mass(posterior):
        if code_scale is None:
            raise ValueError("an autoencoder needs code_scale (std of its codes) for the proposal around f(x)")
        posterior, params["posterior"] = posteriors_lib.code_proposal(posterior, params["posterior"], code_scale,
                                                                      relative_scales)
    model = latent_lib.LatentVariableModel(prior=p, likelihood=base.likelihood, posterior=posterior)
    return dataclasses.replace(run, model=model, variables={**run.variables, "params": params})


def _continuous_codes(run) -> None:
    """A VQ-VAE's codes are discrete (K^M codebook points): its prior is the one over code indices."""
    if run.spec.model.kind.trait("latents") == "discrete":
        raise ConfigError("a VQ-VAE's codes are discrete (points of its codebook), so a density over real codes does "
                          "not fit them: use --density code_prior (vaegen.studies.vq.fit_code_prior)")


def fit(run, *, num_components: int = 10, max_codes: int = 20000, seed: int = 0, bayesian: bool = True,
        covariance_type: str = "full", directory: str | os.PathLike | None = None):
    """Fits the ex-post mixture to ``run``'s training codes and returns ``(generative_run, mixture,
    codes)``; saves the mixture in ``directory`` (default ``<workdir>/expost``) and reuses a saved
    one fitted with the same settings."""
    if not run.has_latents:
        raise NoLatentError(NO_LATENT_MESSAGE)
    _continuous_codes(run)
    directory = pathlib.Path(directory) if directory is not None else pathlib.Path(run.workdir) / "expost"
    x = training_images(run, max_examples=max_codes, seed=seed)
    codes = encode_codes(run.model, run.variables, x, jax.random.key(seed))
    mixture = fit_or_load(codes, directory, num_components=num_components, seed=seed, bayesian=bayesian,
                          covariance_type=covariance_type)
    return generative(run, "expost_mixture", mixture=mixture, code_scale=codes.std(0)), mixture, codes


def load(workdir: str | os.PathLike, *, density: str | None = None, epoch: int | None = None,
         best: bool | None = None):
    """:func:`vaegen.runs.run.load`, with the ex-post density ``density`` fitted before
    (``vaegen expost --density NAME``) attached as p(z): ``gmm`` (the mixture in
    ``<workdir>/expost``), or a learned ``flow``, ``two_stage`` or ``diffusion`` (in
    ``<workdir>/expost/<name>/fit``).  Nothing is fitted; the result samples, evaluates and
    answers ``log_px`` like any run with a prior (an autoencoder's q is then the proposal around
    the code).  This is ``vaegen.load``.

    Raises FileNotFoundError when that density was not fitted to this run."""
    run = run_lib.load(workdir, epoch=epoch, best=best)
    if density is None:
        return run
    if density in LEARNED_DENSITIES:
        return load_learned(run, density)[0]
    if density != "gmm":
        raise ConfigError(f"unknown density {density!r}; choose one of {', '.join(DENSITIES)}")
    directory = pathlib.Path(workdir) / "expost"
    if not (directory / "mixture.npz").exists():
        raise FileNotFoundError(f"{directory} holds no fitted mixture; fit one with `vaegen expost --workdir {workdir}`")
    mixture = Mixture.load(directory)
    settings = mixture.info.get("settings", {})
    x = training_images(run, max_examples=int(settings.get("codes_shape", [20000])[0]), seed=int(settings.get("seed", 0)))
    codes = encode_codes(run.model, run.variables, x, jax.random.key(int(settings.get("seed", 0))))
    return generative(run, "expost_mixture", mixture=mixture, code_scale=codes.std(0))


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
    t0 = time.perf_counter()
    mixture = fit_mixture(codes, num_components=num_components, covariance_type=covariance_type, seed=seed,
                          bayesian=bayesian)
    mixture = dataclasses.replace(mixture, info={**mixture.info, "settings": settings,
                                                 "fit_seconds": time.perf_counter() - t0})
    mixture.save(directory)
    return mixture


# --- learned ex-post densities: flow, second-stage VAE, latent diffusion -----------------------------
#
# Each is a registered prior component (vaegen.blocks.densities) fitted to the codes by vaegen's trainer:
# the codes are the data of a run of model kind ``density`` (vaegen.model.densities) in
# <workdir>/expost/<density>/fit (config.json, metrics.jsonl, checkpoints: it resumes like any run and
# stops on non-finite steps with one line), and its parameters, at params/prior, become p(z) of the
# generative model.

DENSITIES = ("gmm", "flow", "two_stage", "diffusion")
"""``vaegen expost --density`` choices: ``gmm`` (the mixture above) and the learned densities."""
LEARNED_DENSITIES = ("flow", "two_stage", "diffusion")
CODE_KINDS = ("sample", "mean")
"""Which codes a density is fitted to: ``sample``, z ~ q(z | x) (samples of the aggregate posterior,
what a VAE's p(z) should match); ``mean``, E_q[z | x].  An autoencoder's codes are f(x) either way."""

LOG_PX_MEANING = {
    "standard_normal": "stochastic lower bound on log p(x) (importance sampling; exact p(z))",
    "expost_mixture": "stochastic lower bound on log p(x) (importance sampling; exact p(z))",
    "gmm": "stochastic lower bound on log p(x) (importance sampling; exact p(z))",
    "flow": "stochastic lower bound on log p(x) (importance sampling; exact p(z))",
    "two_stage": ("stochastic lower bound on log p(x) in expectation (importance sampling with an unbiased "
                  "importance-sampling estimate of p(z) inside: the average stays unbiased for p(x), its log is "
                  "below log p(x) in expectation by Jensen)"),
    "diffusion": ("stochastic lower bound on log p(x) (importance sampling with p(z) replaced by exp of its "
                  "variational lower bound; the bound is itself a Monte Carlo estimate, whose exp overshoots it by "
                  "about exp(Var / 2): a lower bound up to that, Var = log_pz_mc_std^2 per code)"),
}
"""What the reported log p(x) of a model with each prior is (every table labels it so)."""


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """How a learned density is fitted to the codes (the trainer's settings for it).

    Attributes:
      epochs, batch_size, learning_rate: the fit's training run (Adam).
      max_codes: training codes to fit to (the first ``max_codes`` training images).
      codes: ``sample`` or ``mean`` (:data:`CODE_KINDS`).
      seed: of the codes, the fit and the samples.
      density: the density's component settings (e.g. ``{"layers": 8}``), checked by its registry.
      grad_clip_norm: gradient clipping of the fit (0 = none).
      checkpoint_every, validate_every: epochs between the fit's checkpoints (and the last) and
        between its validation bounds in metrics.jsonl (0 = none).
      patience: early stopping on the validation codes' bound (the trainer's): stop after this many
        validations without improvement and use the best parameters (0 = never; also without
        validation codes).  Flows overfit a few thousand codes in 50-D within tens of epochs.
    """

    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    max_codes: int = 20000
    codes: str = "sample"
    seed: int = 0
    density: dict = dataclasses.field(default_factory=dict)
    grad_clip_norm: float = 10.0
    checkpoint_every: int = 5
    validate_every: int = 1
    patience: int = 5


@dataclasses.dataclass(frozen=True)
class DensityFit:
    """A fitted learned density: ``spec`` (the density run's RunSpec), ``variables``
    (``{"params": {"prior": ...}}``), ``workdir`` (the density run's) and ``info`` (JSON-able:
    fit seconds, codes, held-out log p(z) on validation codes and what it is)."""

    name: str
    spec: Any
    variables: Any
    workdir: pathlib.Path
    info: dict

    def with_settings(self, **settings: Any) -> "DensityFit":
        """The same fitted density with settings that do not change its parameters changed (e.g.
        ``sample_steps``, ``bound_samples`` or ``is_samples``); checked like any setting."""
        prior = self.spec.model.prior
        new = dataclasses.replace(prior.settings, **settings)
        model = dataclasses.replace(self.spec.model, prior=dataclasses.replace(prior, settings=new))
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, model=model))

    def prior_module(self):
        """The prior component (a Flax module returning p(z))."""
        return self.spec.model.prior.build(latent_dim=int(self.spec.model.latent_dim),
                                           event_shape=(int(self.spec.model.latent_dim),))

    def distribution(self) -> distrax.Distribution:
        """p(z) itself (distrax), bound to the fitted parameters."""
        return self.prior_module().apply({"params": self.variables["params"]["prior"]})

    def log_prob(self, z: np.ndarray | jax.Array) -> np.ndarray:
        """log p(z) for ``z [N, D]``, jitted in batches (exact, an estimate or a bound:
        ``info["log_pz_meaning"]``)."""
        return _batched_log_prob(self, np.asarray(z, np.float32))

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        return self.distribution().sample(seed=key, sample_shape=(n,))


def _too_few_codes(num: int, name: str, batch_size: int, latent_dim: int) -> None:
    need = max(int(batch_size), 2 * int(latent_dim), 10)
    if num < need:
        raise DataError(f"only {num} training codes to fit the {name} density to; it needs at least {need} "
                        f"(the fit's batch size {batch_size}, and 2 x D = {2 * latent_dim}): use more training "
                        "images (--max-codes) or a smaller --batch-size")


def fit_spec(fit: FitSettings, *, num_validation: int, model: dict, objective: str, settings_of: str,
             settings_note: str, extra: dict | None = None) -> Any:
    """The RunSpec of a fit to codes with the trainer: codes as real vectors given in memory, the
    ``model`` section (``kind``, ``latent_dim``, ``prior``), ``objective``, Adam and the trainer's
    settings from ``fit`` (early stopping on the validation codes when there are any), no TensorBoard.
    A bad setting of the fitted model is reported as a setting of ``settings_of`` (``settings_note``
    says how they are set)."""
    patience = int(fit.patience) if (num_validation and fit.validate_every) else 0
    mapping = {
        "seed": int(fit.seed),
        "data": {"binarization": "real", "validation_size": int(num_validation)},
        "model": {"likelihood": {"name": "gaussian"}, "init_output_bias_from_data": False, **model},
        "objective": {"name": objective},
        "optim": {"learning_rate": float(fit.learning_rate), "grad_clip_norm": float(fit.grad_clip_norm)},
        "train": {"batch_size": int(fit.batch_size), "num_epochs": int(fit.epochs), "progress": False,
                  "tensorboard": False, "keep_checkpoints": 1, "handle_signals": True,
                  "checkpoint_every_epochs": max(int(fit.checkpoint_every), 1),
                  "eval_every_epochs": int(fit.validate_every), "early_stopping_patience": patience},
        "eval": {"batch_size": 500},
        **(extra or {}),
    }
    section = "config.model.kind." if model.get("kind", {}).get("name") != "density" else "config.model.prior."
    try:
        return config_schema.to_spec(mapping)
    except ConfigError as e:
        raise ConfigError(f"{e} ({settings_note})".replace(section, f"{settings_of} setting ")) from None


def density_spec(name: str, latent_dim: int, fit: FitSettings, *, num_validation: int) -> Any:
    """The RunSpec that fits density ``name`` to codes of dimension ``latent_dim`` with the trainer."""
    if name not in LEARNED_DENSITIES:
        raise ConfigError(f"unknown density {name!r}; choose one of {', '.join(DENSITIES)}")
    if fit.codes not in CODE_KINDS:
        raise ConfigError(f"codes={fit.codes!r}: choose one of {', '.join(CODE_KINDS)}")
    return fit_spec(fit, num_validation=num_validation, objective="density", settings_of=name,
                    settings_note="density settings are set with --set KEY=VALUE", model={"kind": {"name": "density"}, "latent_dim": int(latent_dim),
                           "prior": {"name": name, **dict(fit.density)}})


def check_fit_settings(name: str, fit: FitSettings) -> None:
    """Checks the density's name and settings (as for 2-D codes; the dimension is checked at the fit)."""
    density_spec(name, 2, fit, num_validation=0)


def fit_density(codes: np.ndarray, validation_codes: np.ndarray, name: str, workdir: str | os.PathLike,
                fit: FitSettings = FitSettings(), *, info: dict | None = None) -> DensityFit:
    """Fits the learned density ``name`` to ``codes [N, D]`` with vaegen's trainer in ``workdir`` (resuming a
    fit there) and measures its held-out log p(z) on ``validation_codes [M, D]`` (M may be 0).

    Raises:
      vaegen.errors.DataError: non-finite or too few codes.
      vaegen.errors.ConfigError: unknown density or density settings.
      vaegen.errors.NonFiniteError: the fit diverged (the workdir keeps its checkpoints).
      vaegen.errors.WorkdirError, CheckpointError: ``workdir`` holds another fit.
    """
    codes = checks_lib.check_real_array(codes, "the training codes")
    validation_codes = np.asarray(validation_codes, np.float32).reshape(-1, codes.shape[1])
    if validation_codes.size:
        validation_codes = checks_lib.check_real_array(validation_codes, "the validation codes")
    d = int(codes.shape[1])
    spec = density_spec(name, d, fit, num_validation=int(validation_codes.shape[0]))
    _too_few_codes(int(codes.shape[0]), name, fit.batch_size, d)
    splits = datasets.Splits(train=codes, validation=validation_codes, test=validation_codes[:0],
                             train_labels=None, validation_labels=None, test_labels=None,
                             info={"name": "codes", "event_shape": [d],
                                   "sizes": {"train": int(codes.shape[0]), "validation": int(validation_codes.shape[0])},
                                   **(info or {})})
    workdir = pathlib.Path(workdir)
    t0 = time.perf_counter()
    last = trainer_lib.train_and_evaluate(spec, workdir, splits=splits)
    fit_seconds = time.perf_counter() - t0
    variables = _restore_density(spec, workdir, d)
    fitted = DensityFit(name, spec, variables, workdir, {})
    lp = np.asarray(_batched_log_prob(fitted, validation_codes)) if validation_codes.shape[0] else np.zeros((0,))
    meaning = spec.model.prior.trait("log_prob")
    mc_std = None
    if lp.size > 1 and meaning != "exact":  # a second, independent estimate: its spread is the Monte Carlo error
        other = _batched_log_prob(fitted, validation_codes[:1000], key=jax.random.key(int(fit.seed) + 7919))
        mc_std = float(np.std(lp[:1000] - other) / math.sqrt(2.0))
    result = {"density": name, "settings": spec.model.prior.to_mapping(), "num_codes": int(codes.shape[0]),
              "latent_dim": d, "epochs": int(fit.epochs), "batch_size": int(fit.batch_size),
              "learning_rate": float(fit.learning_rate), "codes": fit.codes,
              "fit_seconds": fit_seconds, "fit_seconds_note": "this call (0 work if the fit was already done)",
              "train_metrics": last,
              "validation_log_pz": float(lp.mean()) if lp.size else None,
              "validation_log_pz_stderr": float(lp.std(ddof=1) / np.sqrt(lp.size)) if lp.size > 1 else None,
              "num_validation_codes": int(lp.size), "log_pz_meaning": meaning,
              "log_pz_mc_std": mc_std, "log_pz_mc_std_note": ("Monte Carlo standard deviation of one code's "
                                                             "log p(z) estimate (None: exact)"),
              "log_px_meaning": LOG_PX_MEANING[name], **(info or {})}
    return dataclasses.replace(fitted, info=result)


def _batched_log_prob(fitted: DensityFit, z: np.ndarray, batch_size: int = 1000, key: jax.Array | None = None
                      ) -> np.ndarray:
    """log p(z) of ``z [N, D]`` in batches (with the Monte Carlo draws of ``key`` where given)."""
    module = fitted.prior_module()
    if key is None:
        fn = jax.jit(lambda params, z, k: module.apply({"params": params}).log_prob(z))
        key = jax.random.key(0)
    else:
        fn = jax.jit(lambda params, z, k: densities_lib.log_prob_estimate(module.apply({"params": params}), z, k))
    params = fitted.variables["params"]["prior"]
    return np.concatenate([np.asarray(fn(params, jnp.asarray(z[i:i + batch_size]), jax.random.fold_in(key, i)))
                           for i in range(0, z.shape[0], batch_size)])


def _restore_density(spec: Any, workdir: pathlib.Path, d: int) -> Any:
    model = latent_lib.build_model(spec.model, spec.inference, (d,))
    template = jax.eval_shape(lambda: latent_lib.init_params(model, jax.random.key(0), (d,)))
    best = workdir / trainer_lib.BEST_DIR   # early stopping kept the best parameters there
    checkpointer = checkpoint_lib.Checkpointer(best if best.is_dir() else workdir / trainer_lib.CHECKPOINTS_DIR,
                                               read_only=True)
    try:
        epoch = checkpointer.latest_epoch()
        if epoch is None:
            raise FileNotFoundError(f"{workdir} holds no fitted density (no checkpoint)")
        variables, _ = checkpointer.restore(epoch, template)
    finally:
        checkpointer.close()
    return variables


def run_codes(run, fit: FitSettings) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(training codes [N, D], validation codes [M, D], info)`` of ``run``: the first ``fit.max_codes``
    training images and the validation split (when the run has none, the last 10% of the training
    codes are held out instead), encoded as ``fit.codes`` says."""
    if not run.has_latents:
        raise NoLatentError(NO_LATENT_MESSAGE)
    if fit.codes not in CODE_KINDS:
        raise ConfigError(f"codes={fit.codes!r}: choose one of {', '.join(CODE_KINDS)}")
    sample = fit.codes == "sample"
    x = training_images(run, max_examples=fit.max_codes, seed=fit.seed)
    codes = encode_codes(run.model, run.variables, x, jax.random.key(fit.seed), sample=sample)
    data = run.data()
    what = ("f(x), the autoencoder's point-mass codes" if run.is_autoencoder else
            "z ~ q(z | x), samples of the aggregate posterior" if sample else "E_q[z | x], posterior means")
    if data.validation.shape[0]:
        xv = splits_lib.model_view(run.spec.data, data.validation[:max(fit.max_codes // 4, 1)], "validation")
        val = encode_codes(run.model, run.variables, jnp.asarray(xv), jax.random.key(fit.seed + 1), sample=sample)
        held = "the run's validation split"
    else:
        cut = int(0.9 * codes.shape[0])
        codes, val = codes[:cut], codes[cut:]
        held = "the last 10% of the training codes (the run has no validation split)"
    return codes, val, {"codes_are": what, "validation_codes_from": held}


def fit_learned(run, name: str, fit: FitSettings = FitSettings(), *, directory: str | os.PathLike | None = None
                ) -> tuple[Any, DensityFit, np.ndarray]:
    """Fits the learned density ``name`` to ``run``'s codes (in ``directory``, default
    ``<workdir>/expost/<name>/fit``) and returns ``(generative_run, fit, training codes)``."""
    if not run.has_latents:
        raise NoLatentError(NO_LATENT_MESSAGE)
    _continuous_codes(run)
    if name not in LEARNED_DENSITIES:
        raise ConfigError(f"unknown density {name!r}; choose one of {', '.join(DENSITIES)}")
    directory = pathlib.Path(directory) if directory is not None else pathlib.Path(run.workdir) / "expost" / name / "fit"
    density_spec(name, int(run.spec.model.latent_dim), fit, num_validation=0)   # settings checked before encoding
    codes, val, info = run_codes(run, fit)
    fitted = fit_density(codes, val, name, directory, fit, info=info)
    return generative(run, name, density=fitted, code_scale=codes.std(0)), fitted, codes


def load_learned(run, name: str, *, directory: str | os.PathLike | None = None) -> tuple[Any, DensityFit]:
    """``(generative_run, fit)`` of a density fitted before (``vaegen expost --density NAME`` or
    :func:`fit_learned`) to ``run`` (from :func:`vaegen.load`), read from ``directory`` (default
    ``<workdir>/expost/<name>/fit``) without fitting anything.

    Raises FileNotFoundError when no fitted density is there."""
    if name not in LEARNED_DENSITIES:
        raise ConfigError(f"unknown density {name!r}; choose one of {', '.join(LEARNED_DENSITIES)}")
    directory = pathlib.Path(directory) if directory is not None else pathlib.Path(run.workdir) / "expost" / name / "fit"
    config = directory / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"{directory} holds no fitted {name} density; fit one with "
                                f"`vaegen expost --workdir {run.workdir} --density {name}`")
    spec = trainer_workdir.parse_stored(config_schema.RunSpec, config)
    variables = _restore_density(spec, directory, int(spec.model.latent_dim))
    eval_json = directory.parent / "eval.json"
    info = json.loads(eval_json.read_text()).get("density", {}) if eval_json.exists() else {}
    fitted = DensityFit(name, spec, variables, directory, info)
    code_scale = None
    if run.is_autoencoder:
        codes, _, _ = run_codes(run, FitSettings(max_codes=int(info.get("num_codes", 5000)) or 5000))
        code_scale = codes.std(0)
    return generative(run, name, density=fitted, code_scale=code_scale), fitted
