"""A trained VQ-VAE made generative: an autoregressive prior p(c) fitted to its training codes, and
what can be said of its log p(x).

A VQ-VAE (:mod:`vaegen.model.vq`) trains without a prior over its codes c in {0..K-1}^M.  Afterwards
(:func:`fit_code_prior`) a categorical MADE (:mod:`vaegen.model.code_prior`, exact log p(c)) is
fitted to the codes c*(x_n) of the training images by vaegen's one trainer, in a run directory of
its own (``<workdir>/expost/code_prior/fit``: config.json, metrics.jsonl, checkpoints; it resumes
like any run).  The generative model is then (:func:`generative`)::

    c ~ p(c),  z = e_c,  x ~ p(x | z)         p(x) = sum_c p(c) p(x | e_c)

and its log p(x) (nats per image, :func:`log_px`) is reported two ways, each labelled:

``bound``  log p(c*) + log p(x | c*), c* = c*(x) the encoder's code: p(x) >= p(c*) p(x | c*) since
    every term of the sum is >= 0, so this is a **deterministic lower bound** on log p(x).
``is``     an importance-sampling estimate over codes that never falls below the bound::

        p^(x) = p(c*) p(x | c*) + 1/S sum_s [c_s != c*] p(c_s) p(x | c_s) / r(c_s | x),
        r(c | x) = prod_m softmax_k(-||z_e,m(x) - e_k||^2 / tau)

    The first term is the c* term exactly; the average estimates the rest of the sum without bias
    (r puts mass on every code).  p^(x) is unbiased for p(x), so E[log p^(x)] <= log p(x) (Jensen):
    a **stochastic lower bound**, and log p^(x) >= ``bound`` for every draw.

For a tiny codebook :func:`log_px_exact` sums all K^M codes: the **exact** log p(x), which both
bounds are checked against.  :func:`codebook_usage` reports how many of the K codes the encoder
uses.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaegen import sharding as sharding_lib
from vaegen.config import schema as config_schema
from vaegen.data import datasets
from vaegen.data import splits as splits_lib
from vaegen.errors import ConfigError, DataError
from vaegen.model import latent as latent_lib
from vaegen.model import vq as vq_model
from vaegen.studies import expost
from vaegen.train import trainer as trainer_lib
from vaegen.train import workdir as trainer_workdir

CODE_PRIOR = "code_prior"
"""The name of the prior over a VQ-VAE's codes (``vaegen expost --density code_prior``)."""

LOG_PX_MEANING = {
    "bound": "deterministic lower bound on log p(x): log p(c*) + log p(x | c*), c* the encoder's code",
    "is": ("stochastic lower bound on log p(x): log of an unbiased estimate of p(x) (the c* term exactly plus an "
           "importance-sampled rest over codes, proposal prod_m softmax(-||z_e,m - e_k||^2 / tau)); never below "
           "the bound"),
    "exact": "exact log p(x): the sum over all K^M codes",
}
"""What each reported log p(x) of a VQ-VAE with its code prior is."""

DEFAULT_TEMPERATURE = 3.0
"""tau of the proposal over codes: the best of 0.1, 0.3, 1, 3, 10 for ``vq_mlp_fmnist`` (200 test images,
k = 100 and 1000); any tau > 0 gives a valid stochastic lower bound, the best one the highest."""


def is_vq(run: Any) -> bool:
    """Whether ``run`` (a :class:`vaegen.Run`) is a VQ-VAE."""
    return run.spec.model.kind.trait("latents") == "discrete"


def check_vq(run: Any) -> None:
    if not is_vq(run):
        raise ConfigError(f"the prior over codes ({CODE_PRIOR}) is fitted to a VQ-VAE's discrete codes, and the run "
                          f"in {run.workdir} is model.kind={run.spec.model.kind.name!r}: train one with "
                          "`vaegen train --config vq_mlp_fmnist`, or fit a density over real codes (--density gmm, "
                          "flow, ...)")


def shape_of_codes(run: Any) -> tuple[int, int]:
    """``(M, K)``: positions per code and codebook size of a VQ-VAE run."""
    check_vq(run)
    settings = run.spec.model.kind.settings
    return int(run.spec.model.latent_dim) // int(settings.code_dim), int(settings.codebook_size)


# --- codes -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Codes:
    model: Any

    def __call__(self, variables, x, key):
        del key
        return self.model.apply(variables, method=lambda m: m.codes(x))


def encode(run: Any, x: Any, *, batch_size: int = 1000) -> np.ndarray:
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


def codebook_usage(run: Any, x: Any) -> dict[str, Any]:
    """Codebook usage (:func:`usage_of`) of the codes of ``x [N, *event]``."""
    _, k = shape_of_codes(run)
    return usage_of(encode(run, x), k)


# --- the fitted prior -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CodePriorFit:
    """A fitted prior over codes: ``spec`` (its run's RunSpec), ``variables`` (``{"params": ...}``
    of a :class:`vaegen.model.code_prior.CategoricalMADE`), ``workdir`` (its run's) and ``info``
    (JSON-able: the fit, held-out log p(c), codebook usage)."""

    spec: Any
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


def prior_spec(num_positions: int, codebook_size: int, fit: expost.FitSettings, *, num_validation: int) -> Any:
    """The RunSpec that fits a categorical MADE to codes ``[N, M]`` with the trainer; ``fit.density``
    holds the MADE's settings (``hidden``, ``activation``, ``ordering``, ``ordering_seed``)."""
    settings = dict(fit.density)
    if settings.get("num_categories", codebook_size) != codebook_size:
        raise ConfigError(f"{CODE_PRIOR} setting num_categories={settings['num_categories']} must be the codebook "
                          f"size {codebook_size}; leave it out")
    settings["num_categories"] = int(codebook_size)
    return expost.fit_spec(fit, num_validation=num_validation, objective="exact", settings_of=CODE_PRIOR,
                           settings_note="settings of the prior over codes are set with --set KEY=VALUE",
                           model={"kind": {"name": "categorical_made", **settings}, "latent_dim": int(num_positions),
                                  "prior": {"name": "none"}},
                           extra={"inference": {"posterior": {"name": "point_mass"}}})


def run_codes(run: Any, fit: expost.FitSettings) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(training codes [N, M], validation codes [V, M], info)`` of a VQ-VAE run: the codes of the
    first ``fit.max_codes`` training images (one binarization draw with ``fit.seed``) and of the
    validation split (the last 10% of the training codes when the run has none)."""
    check_vq(run)
    codes = encode(run, expost.training_images(run, max_examples=fit.max_codes, seed=fit.seed))
    data = run.data()
    if data.validation.shape[0]:
        xv = splits_lib.model_view(run.spec.data, data.validation[:max(fit.max_codes // 4, 1)], "validation")
        val, held = encode(run, xv), "the run's validation split"
    else:
        cut = int(0.9 * codes.shape[0])
        codes, val = codes[:cut], codes[cut:]
        held = "the last 10% of the training codes (the run has no validation split)"
    return codes, val, {"codes_are": "c*(x), the encoder's nearest codes", "validation_codes_from": held}


def fit_code_prior(run: Any, fit: expost.FitSettings = expost.FitSettings(), *,
                   directory: str | os.PathLike | None = None) -> CodePriorFit:
    """Fits a categorical MADE to ``run``'s training codes with vaegen's trainer in ``directory``
    (default ``<workdir>/expost/code_prior/fit``; a fit there resumes) and returns it.

    ``fit``: :class:`vaegen.studies.expost.FitSettings` (epochs, batch size, learning rate, max_codes,
    seed, patience, ...; ``fit.density`` the MADE's settings; ``fit.codes`` does not apply: the codes
    are c*(x)).  ``info`` records the fit, the held-out mean log p(c) on validation codes (exact,
    nats) and the codebook usage of the training codes.

    Raises:
      vaegen.errors.ConfigError: ``run`` is no VQ-VAE; bad settings of the prior.
      vaegen.errors.DataError: fewer training codes than a batch.
      vaegen.errors.NonFiniteError, WorkdirError, CheckpointError: as any training run.
    """
    m, k = shape_of_codes(run)
    prior_spec(m, k, fit, num_validation=0)                    # the settings, checked before encoding anything
    codes, val, info = run_codes(run, fit)
    if codes.shape[0] < fit.batch_size:
        raise DataError(f"only {codes.shape[0]} training codes to fit the {CODE_PRIOR} to, fewer than its batch "
                        f"size {fit.batch_size}: use more training images (--max-codes) or a smaller --batch-size")
    spec = prior_spec(m, k, fit, num_validation=int(val.shape[0]))
    splits = datasets.Splits(train=codes.astype(np.float32), validation=val.astype(np.float32),
                             test=val[:0].astype(np.float32), train_labels=None, validation_labels=None,
                             test_labels=None, info={"name": "codes", "event_shape": [m],
                                                     "sizes": {"train": int(codes.shape[0]),
                                                               "validation": int(val.shape[0])}})
    directory = pathlib.Path(directory) if directory is not None else default_directory(run)
    t0 = time.perf_counter()
    last = trainer_lib.train_and_evaluate(spec, directory, splits=splits)
    seconds = time.perf_counter() - t0
    fitted = CodePriorFit(spec, expost._restore_density(spec, directory, m), directory, {})
    lp = fitted.log_prob(val)
    result = {"density": CODE_PRIOR, "settings": spec.model.kind.to_mapping(), "num_codes": int(codes.shape[0]),
              "num_positions": m, "codebook_size": k, "log_num_codes": m * math.log(k),
              "epochs": int(fit.epochs), "batch_size": int(fit.batch_size), "learning_rate": float(fit.learning_rate),
              "fit_seconds": seconds, "fit_seconds_note": "this call (0 work if the fit was already done)",
              "train_metrics": last,
              "validation_log_pc": float(lp.mean()) if lp.size else None,
              "validation_log_pc_stderr": float(lp.std(ddof=1) / np.sqrt(lp.size)) if lp.size > 1 else None,
              "num_validation_codes": int(lp.size), "log_pc_meaning": "exact (nats per code vector)",
              "uniform_log_pc": -m * math.log(k),
              "training_codebook_usage": usage_of(codes, k), **info}
    (directory / "code_prior.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return dataclasses.replace(fitted, info=result)


def default_directory(run: Any) -> pathlib.Path:
    return pathlib.Path(run.workdir) / "expost" / CODE_PRIOR / "fit"


def load_code_prior(run: Any, *, directory: str | os.PathLike | None = None) -> CodePriorFit:
    """The prior over ``run``'s codes fitted before (:func:`fit_code_prior`, ``vaegen expost --density
    code_prior``), read from ``directory`` without fitting.  FileNotFoundError when there is none."""
    check_vq(run)
    directory = pathlib.Path(directory) if directory is not None else default_directory(run)
    config = directory / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"{directory} holds no fitted {CODE_PRIOR}; fit one with "
                                f"`vaegen expost --workdir {run.workdir} --density {CODE_PRIOR}`")
    spec = trainer_workdir.parse_stored(config_schema.RunSpec, config)
    variables = expost._restore_density(spec, directory, int(spec.model.latent_dim))
    record = directory / "code_prior.json"
    info = json.loads(record.read_text()) if record.exists() else {}
    return CodePriorFit(spec, variables, directory, info)


# --- the generative model and its log p(x) ---------------------------------------------------------

def generative(run: Any, fitted: CodePriorFit) -> Any:
    """``run`` with the fitted prior over codes attached: a new ``Run`` whose model samples
    (``m.sample_with_latents(key, n) -> (z [n, D], x [n, *event])``, z = e_c with c ~ p(c)) and
    whose ``m.log_prob_codes(c)`` is the exact log p(c).  Encoder, codebook and decoder are the
    run's, parameter for parameter."""
    m, k = shape_of_codes(run)
    prior = fitted.module()
    if prior.num_positions != m or prior.num_categories != k:
        raise ValueError(f"the prior is over {prior.num_positions} positions of {prior.num_categories} codes, the "
                         f"VQ-VAE's codes have {m} positions of {k}")
    model = vq_model.with_prior(run.model, prior)
    params = {**run.variables["params"], "prior": fitted.variables["params"]}
    return dataclasses.replace(run, model=model, variables={**run.variables, "params": params})


@dataclasses.dataclass(frozen=True)
class _LogPx:
    """Per example: the bound and the importance-sampled estimate (see the module)."""

    model: Any
    num_samples: int
    temperature: float

    def __call__(self, variables, x, key):
        def f(m):
            q = m.quantize(x)
            star = q["indices"]                                                     # [M]
            log_pc = m.log_prob_codes(star)
            rec = m.log_likelihood(x, m.code_vectors(star))
            out = {"bound": log_pc + rec, "log_p_code": log_pc, "reconstruction": rec}
            if not self.num_samples:
                return out
            log_r = jax.nn.log_softmax(-q["distances"] / self.temperature, axis=-1)      # [M, K]
            c = jax.random.categorical(key, log_r, axis=-1, shape=(self.num_samples,) + star.shape)   # [S, M]
            log_rc = jnp.sum(jnp.take_along_axis(log_r[None], c[..., None], axis=-1)[..., 0], -1)   # [S]
            log_joint = m.log_prob_codes(c) + m.log_likelihood(x, m.code_vectors(c))            # [S]
            other = jnp.any(c != star, axis=-1)
            log_w = jnp.where(other, log_joint - log_rc, -jnp.inf)
            rest = jax.scipy.special.logsumexp(log_w) - math.log(self.num_samples)
            out["is"] = jnp.logaddexp(out["bound"], rest)
            out["is_fraction_at_code"] = 1.0 - jnp.mean(other.astype(jnp.float32))
            return out

        return self.model.apply(variables, method=f)


def log_px(gen: Any, x: Any, key: jax.Array, k: int = 100, *, temperature: float = DEFAULT_TEMPERATURE,
           batch_size: int = 100) -> dict[str, np.ndarray]:
    """log p(x) of the generative VQ-VAE ``gen`` (:func:`generative`) for ``x [N, *event]``, nats ``[N]``:

    ``bound``  log p(c*) + log p(x | c*): a deterministic lower bound;
    ``is``     the importance-sampled estimate with ``k`` codes drawn from
               r(c | x) = prod_m softmax(-||z_e,m - e_k||^2 / temperature): a stochastic lower bound,
               >= ``bound`` for every draw (absent when ``k`` = 0);
    and their parts ``log_p_code`` (log p(c*)), ``reconstruction`` (log p(x | c*)),
    ``is_fraction_at_code`` (the share of draws equal to c*).  Example ``i`` draws with
    ``fold_in(key, i)``; results do not depend on ``batch_size``."""
    if k < 0 or temperature <= 0:
        raise ValueError(f"log_px: k must be >= 0 and temperature > 0, got k={k}, temperature={temperature}")
    x = jnp.asarray(x)
    fn = jax.tree_util.Partial(_LogPx(gen.model, int(k), float(temperature)), gen.variables)
    out = sharding_lib.map_examples(fn, x, key, batch_size=min(batch_size, x.shape[0]))
    return {name: np.asarray(v) for name, v in out.items()}


def all_codes(num_positions: int, codebook_size: int) -> np.ndarray:
    """Every code ``[K^M, M]`` int32 (for tiny codebooks)."""
    return np.asarray(list(itertools.product(range(codebook_size), repeat=num_positions)), np.int32)


def log_px_exact(gen: Any, x: Any, *, max_codes: int = 100_000) -> np.ndarray:
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


def evaluate(gen: Any, x: Any, key: jax.Array, *, k: int = 100,
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
        out["log_px_is"] = {**_summary(r["is"], LOG_PX_MEANING["is"]), "k": int(k), "temperature": float(temperature),
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
