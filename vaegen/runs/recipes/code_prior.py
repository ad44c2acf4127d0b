"""A trained VQ-VAE made generative: an autoregressive prior p(c) fitted to its training codes, and
what can be said of its log p(x).

A VQ-VAE (:mod:`vaegen.model.vq`) trains without a prior over its codes c in {0..K-1}^M.  Afterwards
(the ``code_prior`` recipe) a categorical MADE (:mod:`vaegen.model.code_prior`, exact log p(c)) is
fitted to the codes c*(x_n) of the training images by vaegen's one trainer, in a run directory of
its own (``<workdir>/expost/code_prior/fit``: config.json, metrics.jsonl, checkpoints; it resumes
like any run).  The generative model is then::

    c ~ p(c),  z = e_c,  x ~ p(x | z)         p(x) = sum_c p(c) p(x | e_c)

and its log p(x) (nats per image, :func:`log_px`) is reported two ways, each labelled:

``bound``  log p(c*) + log p(x | c*), c* = c*(x) the encoder's code: p(x) >= p(c*) p(x | c*) since
    every term of the sum is >= 0, so this is a **deterministic lower bound** on log p(x).
``is``     an importance-sampling estimate over codes that never falls below the bound::

        p^(x) = p(c*) p(x | c*) + 1/S sum_s [c_s != c*] p(c_s) p(x | c_s) / r(c_s | x),
        r(c | x) = 1/J sum_j r_j(c | x),   r_j(c | x) = prod_m softmax_k(-||z_e,m(x) - e_k||^2 / (t f_j s))

    The first term is the c* term exactly; the average estimates the rest of the sum without bias
    (r puts mass on every code).  p^(x) is unbiased for p(x), so E[log p^(x)] <= log p(x) (Jensen):
    a **stochastic lower bound**, and log p^(x) >= ``bound`` for every draw.

    The proposal is **scale-free**: its temperature t (``temperature``) is relative to s, the mean
    squared distance between two distinct vectors of the run's codebook (:func:`codebook_scale`),
    so the proposal -- every draw, and the estimate -- is the same for a codebook, encoder output
    and decoder input scaled by any a > 0 (the same model).  An absolute temperature turns into
    "always the encoder's own code" as the codebook grows, and misses the rest of the sum.  How
    sharp the proposal should be still depends on the codebook (a flat one is best for 4^2 codes, a
    sharp one for 512^10), so r mixes J = 5 temperatures t f_j, f = (0.1, 0.3, 1, 3, 10)
    (:data:`TEMPERATURE_FACTORS`), as :class:`vaegen.blocks.posteriors.CodeProposal` mixes widths
    around an autoencoder's code: draw s comes from r_{s mod J} and is weighed by the mixture
    (deterministic-mixture importance sampling), never much worse than the best of the J.  With
    t = 0.3 (:data:`DEFAULT_TEMPERATURE`), k = 100: within 0.02 nats of the exact log p(x) on
    average (0.4 at worst) on trained tiny VQ-VAEs with 4^2 and 8^2 codes, at every scale of the
    codebook (an absolute tau = 3 at 10x the scale: 1.2 and 1.4 nats, 4.2 at worst); on ``vq_mlp_fmnist``
    (512^10 codes) 0.2 nats below tau = 3 there (``tests/test_vq.py``; docs/trained-generative.md).

For a tiny codebook :func:`log_px_exact` sums all K^M codes: the **exact** log p(x), which both
bounds are checked against.  :func:`codebook_usage` reports how many of the K codes the encoder
uses.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaegen import sharding as sharding_lib
from vaegen.config.schema import RunSpec
from vaegen.data import datasets
from vaegen.data import splits as splits_lib
from vaegen.errors import DataError, RecipeError
from vaegen.model import code_prior as code_prior_model
from vaegen.model import latent as latent_lib
from vaegen.model import vq as vq_model
from vaegen.registry import setting, to_mapping
from vaegen.runs import codes as codes_lib
from vaegen.runs.recipes.store import read_json, write_json
from vaegen.runs.recipes.base import Estimate, Fit, LogPx, Recipe, register_recipe
from vaegen.runs.recipes.learned import (FIT_DIR, FitSettings, check_finished, check_same_settings, fit_spec,
                                         restore, train_seconds)
from vaegen.runs.run import Run
from vaegen.train import trainer as trainer_lib
from vaegen.train import workdir as workdir_lib

LOG_PX_MEANING = {
    "bound": "deterministic lower bound on log p(x): log p(c*) + log p(x | c*), c* the encoder's code",
    "is": ("stochastic lower bound on log p(x): log of an unbiased estimate of p(x) (the c* term exactly plus an "
           "importance-sampled rest over codes, proposal an equal mixture over j of prod_m softmax(-||z_e,m - "
           "e_k||^2 / (t f_j s)), s the codebook's mean squared distance between codes); never below the bound"),
    "exact": "exact log p(x): the sum over all K^M codes",
}
"""What each reported log p(x) of a VQ-VAE with its code prior is."""

DEFAULT_TEMPERATURE = 0.3
"""t, the centre of the proposal's temperatures, relative to the codebook's scale s
(:func:`codebook_scale`): the proposal mixes t f_j s over :data:`TEMPERATURE_FACTORS`.  Any t > 0
gives a valid stochastic lower bound, the best one the highest (the module has the measurements)."""


TEMPERATURE_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)
"""The proposal is an equal mixture of J temperatures t f_j around t (as
:class:`vaegen.blocks.posteriors.CodeProposal` mixes widths around the code): a sharp one for large
codebooks, a flat one for small; never much worse than the best of them (it spends 1/J of the draws
on each)."""


def codebook_scale(codebook: Any) -> jax.Array:
    """s: the mean squared distance ||e_j - e_k||^2 over pairs j != k of the codebook ``[K, d]`` (a
    float32 scalar; 1 for a degenerate codebook whose vectors all coincide).  Scaling the codebook
    by a scales s by a^2, so tau = t s makes the proposal scale-free."""
    e = jnp.asarray(codebook, jnp.float32)
    k = e.shape[0]
    # sum_{j,k} ||e_j - e_k||^2 = 2 K sum_k ||e_k - mean||^2: no K x K matrix.
    spread = jnp.sum((e - jnp.mean(e, axis=0)) ** 2)
    s = 2.0 * k * spread / (k * (k - 1))
    return jnp.where(s > 0, s, 1.0)


def shape_of_codes(run: Run) -> tuple[int, int]:
    """``(M, K)``: positions per code and codebook size of a VQ-VAE run."""
    settings = run.spec.model.kind.settings
    return int(run.spec.model.latent_dim) // int(settings.code_dim), int(settings.codebook_size)


# --- codes -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Codes:
    model: Any

    def __call__(self, variables, x, key):
        del key
        return self.model.apply(variables, method=lambda m: m.codes(x))


def encode(run: Run, x: Any, *, batch_size: int = 1000) -> np.ndarray:
    """c*(x) for ``x [N, *event]`` (as the model sees them): int32 ``[N, M]``."""
    x = jnp.asarray(x)
    fn = jax.tree_util.Partial(_Codes(run.model), run.variables)
    return np.asarray(sharding_lib.map_examples(fn, x, jax.random.key(0), batch_size=min(batch_size, x.shape[0])))


def usage_of(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Codebook usage of codes ``[N, M]`` (pooled over positions): ``perplexity`` exp(entropy) of
    the codes' frequencies (1 .. K), ``used_codes`` (chosen at least once), ``dead_codes`` (never
    chosen), ``codebook_size``, ``num_examples``."""
    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=codebook_size).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    nz = p[p > 0]
    used = int((counts > 0).sum())
    return {"perplexity": float(np.exp(-np.sum(nz * np.log(nz)))), "used_codes": used,
            "dead_codes": int(codebook_size - used), "codebook_size": int(codebook_size),
            "num_examples": int(np.asarray(codes).shape[0])}


def codebook_usage(run: Run, x: Any) -> dict[str, Any]:
    """Codebook usage (:func:`usage_of`) of the codes of ``x [N, *event]``."""
    _, k = shape_of_codes(run)
    return usage_of(encode(run, x), k)


# --- the fitted prior -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CodePriorFit:
    """A fitted prior over codes: ``spec`` (its run's RunSpec), ``variables`` (``{"params": ...}``
    of a :class:`vaegen.model.code_prior.CategoricalMADE`), ``workdir`` (its run's) and ``info``
    (JSON-able: the fit, held-out log p(c), codebook usage)."""

    spec: RunSpec
    variables: Any
    workdir: pathlib.Path
    info: dict

    def module(self):
        """The prior (a Flax module with ``log_prob(c)`` and ``sample(key, n)``)."""
        m = int(self.spec.model.latent_dim)
        return latent_lib.build_model(self.spec.model, self.spec.inference, (m,))

    def log_prob(self, c: Any, batch_size: int = 4096) -> np.ndarray:
        """Exact log p(c) in nats for codes ``c [N, M]``: ``[N]``."""
        module = self.module()
        fn = jax.jit(lambda v, c: module.apply(v, c, method="log_prob"))
        c = np.asarray(c, np.int32)
        return np.concatenate([np.asarray(fn(self.variables, jnp.asarray(c[i:i + batch_size])))
                               for i in range(0, c.shape[0], batch_size)]) if c.shape[0] else np.zeros((0,))

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        """``n`` codes c ~ p(c): int32 ``[n, M]``."""
        return np.asarray(self.module().apply(self.variables, key, n, method="sample"))


@dataclasses.dataclass(frozen=True)
class CodePriorSettings(FitSettings):
    temperature: float = setting(DEFAULT_TEMPERATURE, "t of the importance-sampling proposal over codes, relative to "
                                 "the codebook's scale s: it mixes prod_m softmax(-||z_e,m - e_k||^2 / (t f_j s)) over "
                                 "f = 0.1, 0.3, 1, 3, 10", gt=0)
    density: code_prior_model.CategoricalMADESettings = dataclasses.field(
        default_factory=code_prior_model.CategoricalMADESettings, metadata={"doc": "the categorical MADE's settings"})


def _run_codes(run: Run, s: FitSettings) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(training codes [N, M], validation codes [V, M], info)`` of a VQ-VAE run: the codes of the
    first ``s.max_codes`` training images (one binarization draw with ``s.seed``) and of the
    validation split (the last 10% of the training codes when the run has none)."""
    codes = encode(run, codes_lib.training_images(run, max_examples=s.max_codes, seed=s.seed))
    data = run.data()
    if data.validation.shape[0]:
        xv = splits_lib.model_view(run.spec.data, data.validation[:max(s.max_codes // 4, 1)], "validation")
        val, held = encode(run, xv), "the run's validation split"
    else:
        cut = int(0.9 * codes.shape[0])
        codes, val = codes[:cut], codes[cut:]
        held = "the last 10% of the training codes (the run has no validation split)"
    return codes, val, {"codes_are": "c*(x), the encoder's nearest codes", "validation_codes_from": held}


@register_recipe("code_prior", settings=CodePriorSettings, label="code prior", samples_from="categorical MADE on codes",
                 tag="prior", log_px=LogPx.STOCHASTIC_LOWER_BOUND, log_px_meaning=LOG_PX_MEANING["is"],
                 needs=("codebook",), fitted=True)
class CodePrior(Recipe):
    """p(c): a categorical MADE (exact log p(c)) fitted by the trainer to a VQ-VAE's discrete codes after
    training; log p(x) by importance sampling over codes, never below log p(c*) + log p(x | c*)."""

    def prior_spec(self, num_positions: int, codebook_size: int, *, num_validation: int) -> RunSpec:
        """The RunSpec that fits a categorical MADE to codes ``[N, M]`` with the trainer."""
        s = self.settings
        settings = to_mapping(s.density)   # num_categories is the codebook size, whatever was set
        settings["num_categories"] = int(codebook_size)
        return fit_spec(s, num_validation=num_validation, objective="exact", settings_of=self.name,
                        settings_note="settings of the prior over codes are set with --set KEY=VALUE",
                        model={"kind": {"name": "categorical_made", **settings}, "latent_dim": int(num_positions),
                               "prior": {"name": "none"}},
                        extra={"inference": {"posterior": {"name": "point_mass"}}})

    def fit(self, run: Run, *, directory: str | os.PathLike | None = None, codes: np.ndarray | None = None,
            refit: bool = False) -> Fit:
        """Fits a categorical MADE to ``run``'s training codes with vaegen's trainer in ``directory``
        (default ``<workdir>/expost/code_prior/fit``; a fit there resumes).  ``info`` records the fit,
        the held-out mean log p(c) on validation codes (exact, nats) and the codebook usage.

        Raises:
          vaegen.errors.RecipeError: ``run`` is no VQ-VAE; a fit with other settings there.
          vaegen.errors.ConfigError: bad settings of the prior.
          vaegen.errors.DataError: fewer training codes than a batch.
        """
        self.check(run)
        s = self.settings
        m, k = shape_of_codes(run)
        self.prior_spec(m, k, num_validation=0)                    # the settings, checked before encoding anything
        train, val, info = _run_codes(run, s)
        if train.shape[0] < s.batch_size:
            raise DataError(f"only {train.shape[0]} training codes to fit the {self.name} to, fewer than its batch "
                            f"size {s.batch_size}: use more training images (--max-codes) or a smaller --batch-size")
        spec = self.prior_spec(m, k, num_validation=int(val.shape[0]))
        directory = (pathlib.Path(directory) if directory is not None else self.directory(run.workdir) / FIT_DIR)
        check_same_settings(self.name, directory, spec, refit=refit)
        splits = datasets.Splits(train=train.astype(np.float32), validation=val.astype(np.float32),
                                 test=val[:0].astype(np.float32), train_labels=None, validation_labels=None,
                                 test_labels=None, info={"name": "codes", "event_shape": [m],
                                                         "sizes": {"train": int(train.shape[0]),
                                                                   "validation": int(val.shape[0])}})
        t0 = time.perf_counter()
        last = trainer_lib.train_and_evaluate(spec, directory, splits=splits)
        seconds = time.perf_counter() - t0
        fitted = CodePriorFit(spec, restore(spec, directory, m), directory, {})
        lp = fitted.log_prob(val)
        result = {"density": self.name, "settings": spec.model.kind.to_mapping(), "num_codes": int(train.shape[0]),
                  "num_positions": m, "codebook_size": k, "log_num_codes": m * math.log(k),
                  "epochs": int(s.epochs), "batch_size": int(s.batch_size), "learning_rate": float(s.learning_rate),
                  "fit_seconds": seconds, "fit_seconds_note": "this call (0 work if the fit was already done)",
                  "train_metrics": last,
                  "validation_log_pc": float(lp.mean()) if lp.size else None,
                  "validation_log_pc_stderr": float(lp.std(ddof=1) / np.sqrt(lp.size)) if lp.size > 1 else None,
                  "num_validation_codes": int(lp.size), "log_pc_meaning": "exact (nats per code vector)",
                  "uniform_log_pc": -m * math.log(k),
                  "training_codebook_usage": usage_of(train, k), **info}
        write_json(directory / "code_prior.json", result)
        fitted = dataclasses.replace(fitted, info=result)
        self.record_settings(directory)
        return Fit(self.name, directory, fitted, result)

    def load_fit(self, run: Run, *, directory: str | os.PathLike | None = None) -> Fit:
        self.check(run)
        directory = pathlib.Path(directory) if directory is not None else self.directory(run.workdir) / FIT_DIR
        config = directory / workdir_lib.CONFIG_FILE
        if not config.exists():
            raise FileNotFoundError(f"{directory} holds no fitted {self.name}; fit one with "
                                    f"`vaegen expost --workdir {run.workdir} --density {self.name}`")
        spec = workdir_lib.parse_stored(RunSpec, config)
        check_finished(self.name, directory, spec, run.workdir)
        variables = restore(spec, directory, int(spec.model.latent_dim))
        record = directory / "code_prior.json"
        info = read_json(record, remedy="run `vaegen expost` again to rewrite it") if record.exists() else {}
        return Fit(self.name, directory, CodePriorFit(spec, variables, directory, info), info)

    def fit_seconds(self, fit: Fit) -> float | None:
        return train_seconds(fit.directory)

    def describe_fit(self, fit: Fit) -> str:
        info = fit.info
        usage = info["training_codebook_usage"]
        held = ("n/a" if info["validation_log_pc"] is None else
                f"{info['validation_log_pc']:.3f} +- {info['validation_log_pc_stderr']:.3f} nats (exact; uniform "
                f"{info['uniform_log_pc']:.3f})")
        return (f"fitted the prior over codes (categorical MADE, {info['num_positions']} positions of "
                f"{info['codebook_size']} codes) to {info['num_codes']} training codes in {info['fit_seconds']:.1f} s; "
                f"held-out log p(c) on {info['num_validation_codes']} validation codes: {held}; training codes: "
                f"perplexity {usage['perplexity']:.1f}, {usage['used_codes']} of {info['codebook_size']} codes used; "
                f"fit in {fit.directory}")

    def attach(self, run: Run, fit: Fit, *, code_scale: np.ndarray | None = None) -> Run:
        """``run`` with the fitted prior over codes attached: its model samples (z = e_c with c ~ p(c))
        and ``m.log_prob_codes(c)`` is the exact log p(c).  Encoder, codebook and decoder are the run's,
        parameter for parameter."""
        self.check(run)
        fitted: CodePriorFit = fit.value
        m, k = shape_of_codes(run)
        prior = fitted.module()
        if prior.num_positions != m or prior.num_categories != k:
            raise RecipeError(f"the prior in {fit.directory} is over {prior.num_positions} positions of "
                              f"{prior.num_categories} codes, the VQ-VAE's codes have {m} positions of {k}: it was "
                              "fitted to another run")
        model = vq_model.with_prior(run.model, prior)
        params = {**run.variables["params"], "prior": fitted.variables["params"]}
        return dataclasses.replace(run, model=model, variables={**run.variables, "params": params}, recipe=self.selected)

    def log_px(self, gen: Run, x: Any, key: jax.Array, *, k: int, with_elbo: bool = False) -> Estimate:
        """Importance sampling over codes (``is``) as ``log_px``, its deterministic bound log p(x, c*) as
        ``elbo`` (q(c | x) is a point mass on the discrete c*), and their parts."""
        tau = float(self.settings.temperature)
        r = log_px(gen, x, key, k=k, temperature=tau)
        values = {"log_px": r["is"], "elbo": r["bound"], "log_p_code": r["log_p_code"],
                  "reconstruction": r["reconstruction"]}
        meanings = {"log_px": LOG_PX_MEANING["is"], "elbo": LOG_PX_MEANING["bound"],
                    "log_p_code": "exact log p(c*) under the fitted prior", "reconstruction": "log p(x | c*), exact"}
        return Estimate(values, f"IS over codes, k={int(k)}: the encoder's code c* exactly, the rest from a mixture of "
                                f"prod_m softmax(-‖z_e,m − e_k‖² / (t f_j s)), t = {tau:g} of the codebook's scale s",
                        extra={"meanings": meanings, "codebook_usage": codebook_usage(gen, x),
                               "fraction_of_draws_at_code": float(np.mean(r["is_fraction_at_code"])) if k else None})

    def evaluate(self, gen: Run, xs: Any, key: jax.Array, *, k: int) -> Estimate | None:
        return self.log_px(gen, xs, key, k=k)


# --- log p(x) -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _LogPx:
    """Per example: the bound and the importance-sampled estimate (see the module)."""

    model: Any
    num_samples: int
    temperature: float
    factors: tuple[float, ...] = TEMPERATURE_FACTORS

    def __call__(self, variables, x, key):
        def f(m):
            q = m.quantize(x)
            star = q["indices"]                                                     # [M]
            log_pc = m.log_prob_codes(star)
            rec = m.log_likelihood(x, m.code_vectors(star))
            out = {"bound": log_pc + rec, "log_p_code": log_pc, "reconstruction": rec}
            if not self.num_samples:
                return out
            s, j = self.num_samples, len(self.factors)
            # The J proposals r_j = prod_m softmax(-d_m / (t f_j s)), s the codebook's scale.
            tau = self.temperature * jnp.asarray(self.factors, jnp.float32) * codebook_scale(m.posterior.codebook())
            log_r = jax.nn.log_softmax(-q["distances"][None] / tau[:, None, None], axis=-1)       # [J, M, K]
            # Draw s from r_{s mod J}: n_j = #{s : s mod J = j} draws of each (deterministic mixture sampling).
            which = jnp.arange(s) % j                                                            # [S]
            c = jax.random.categorical(key, log_r[which], axis=-1)                               # [S, M]
            log_rj = jnp.sum(jnp.take_along_axis(log_r[:, None], c[None, ..., None], axis=-1)[..., 0], -1)  # [J, S]
            counts = jnp.bincount(which, length=j).astype(jnp.float32)                           # [J] n_j
            log_rc = jax.scipy.special.logsumexp(log_rj, axis=0, b=(counts / s)[:, None])        # [S] log sum_j n_j/S r_j
            log_joint = m.log_prob_codes(c) + m.log_likelihood(x, m.code_vectors(c))            # [S]
            other = jnp.any(c != star, axis=-1)
            log_w = jnp.where(other, log_joint - log_rc, -jnp.inf)
            rest = jax.scipy.special.logsumexp(log_w) - math.log(s)
            out["is"] = jnp.logaddexp(out["bound"], rest)
            out["is_fraction_at_code"] = 1.0 - jnp.mean(other.astype(jnp.float32))
            return out

        return self.model.apply(variables, method=f)


def log_px(gen: Run, x: Any, key: jax.Array, k: int = 100, *, temperature: float = DEFAULT_TEMPERATURE,
           factors: tuple[float, ...] = TEMPERATURE_FACTORS, batch_size: int = 100) -> dict[str, np.ndarray]:
    """log p(x) of the generative VQ-VAE ``gen`` (the ``code_prior`` recipe attached) for ``x [N, *event]``,
    nats ``[N]``:

    ``bound``  log p(c*) + log p(x | c*): a deterministic lower bound;
    ``is``     the importance-sampled estimate with ``k`` codes drawn from
               r(c | x) = 1/J sum_j prod_m softmax(-||z_e,m - e_k||^2 / (temperature f_j s)), s the
               codebook's scale (:func:`codebook_scale`), f_j the ``factors``: a stochastic lower bound,
               >= ``bound`` for every draw (absent when ``k`` = 0);
    and their parts ``log_p_code`` (log p(c*)), ``reconstruction`` (log p(x | c*)),
    ``is_fraction_at_code`` (the share of draws equal to c*).  Example ``i`` draws with
    ``fold_in(key, i)``; results do not depend on ``batch_size``."""
    if k < 0 or not temperature > 0 or not factors or not all(f > 0 for f in factors):
        raise ValueError(f"log_px: k must be >= 0, temperature > 0 (relative to the codebook's scale) and the factors "
                         f"> 0, got k={k}, temperature={temperature}, factors={factors}")
    x = jnp.asarray(x)
    fn = jax.tree_util.Partial(_LogPx(gen.model, int(k), float(temperature), tuple(float(f) for f in factors)),
                               gen.variables)
    out = sharding_lib.map_examples(fn, x, key, batch_size=min(batch_size, x.shape[0]))
    return {name: np.asarray(v) for name, v in out.items()}


def all_codes(num_positions: int, codebook_size: int) -> np.ndarray:
    """Every code ``[K^M, M]`` int32 (for tiny codebooks)."""
    return np.asarray(list(itertools.product(range(codebook_size), repeat=num_positions)), np.int32)


def log_px_exact(gen: Run, x: Any, *, max_codes: int = 100_000) -> np.ndarray:
    """The exact log p(x) = log sum_c p(c) p(x | e_c) of the generative VQ-VAE for ``x [N, *event]``
    by summing all K^M codes: nats ``[N]``.  For tiny codebooks only (K^M <= ``max_codes``)."""
    m, k = gen.model.num_groups, gen.model.codebook_size
    if k**m > max_codes:
        raise ValueError(f"log_px_exact sums all K^M = {k}^{m} codes; that is more than max_codes={max_codes}")
    codes = jnp.asarray(all_codes(m, k))

    def f(mod, x):
        z = mod.code_vectors(codes)                                                       # [C, D]
        log_joint = mod.log_prob_codes(codes) + jax.vmap(lambda xi: mod.log_likelihood(xi, z))(x)   # [N, C]
        return jax.scipy.special.logsumexp(log_joint, axis=-1)

    return np.asarray(jax.jit(lambda v, x: gen.model.apply(v, x, method=f))(gen.variables, jnp.asarray(x)))


def _summary(values: np.ndarray, meaning: str) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "stderr": float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None,
            "meaning": meaning}


def evaluate(gen: Run, x: Any, key: jax.Array, *, k: int = 100,
             temperature: float = DEFAULT_TEMPERATURE) -> dict[str, Any]:
    """The VQ-VAE with its code prior on ``x [N, *event]``: JSON-able means and standard errors
    (nats per image, each labelled) of ``log_px_bound``, ``log_px_is`` (``k`` > 0), ``log_p_code``
    and ``reconstruction``, with the codebook usage of x's codes."""
    r = log_px(gen, x, key, k, temperature=temperature)
    m, kk = gen.model.num_groups, gen.model.codebook_size
    out = {"num_examples": int(np.asarray(x).shape[0]), "num_positions": m, "codebook_size": kk,
           "log_px_bound": _summary(r["bound"], LOG_PX_MEANING["bound"]),
           "log_p_code": _summary(r["log_p_code"], "exact log p(c*) under the fitted prior (uniform: "
                                  f"{-m * math.log(kk):.3f})"),
           "reconstruction": _summary(r["reconstruction"], "log p(x | c*), exact"),
           "codebook_usage": usage_of(encode(gen, x), kk)}
    if k:
        scale = float(gen.model.apply(gen.variables, method=lambda mod: codebook_scale(mod.posterior.codebook())))
        out["log_px_is"] = {**_summary(r["is"], LOG_PX_MEANING["is"]), "k": int(k), "temperature": float(temperature),
                            "temperature_is": "relative to the codebook's scale s: the proposal mixes tau_j = "
                                              "temperature * factor_j * s",
                            "temperature_factors": list(TEMPERATURE_FACTORS), "codebook_scale": scale,
                            "tau": [float(temperature) * f * scale for f in TEMPERATURE_FACTORS],
                            "fraction_of_draws_at_code": float(np.mean(r["is_fraction_at_code"]))}
    return out


def format_summary(result: dict[str, Any]) -> str:
    """The lines ``vaegen expost --density code_prior`` prints for :func:`evaluate`'s result."""
    lines = [f"{'quantity':<16} {'mean (nats)':>12} {'stderr':>8}  what it is"]
    for name in ("log_px_is", "log_px_bound", "log_p_code", "reconstruction"):
        if name in result:
            r = result[name]
            se = "" if r["stderr"] is None else f"{r['stderr']:.3f}"
            lines.append(f"{name:<16} {r['mean']:>12.3f} {se:>8}  {r['meaning']}")
    u = result["codebook_usage"]
    lines.append(f"codebook usage on these images: perplexity {u['perplexity']:.1f}, {u['used_codes']} of "
                 f"{u['codebook_size']} codes used ({u['dead_codes']} unused)")
    return "\n".join(lines)
