"""The headline study: why a VAE is a generative model and an AE is not, and what makes an AE one.

``vaegen compare --preset quick --workdir runs/compare`` trains every model below with the same
trainer, the same networks (encoder and decoder trunks, latent size) and the same likelihood
p(x | z), evaluates them on the same test images, and writes ``report/report.md`` with PNG
figures: prior samples side by side, reconstructions, a 2-D latent map with the prior's contours
over the codes, interpolations, the DAE's Markov chain, the metric table and a short answer to
the question, worded from the measured numbers.

Models (variants, each an ordinary vaegen run in ``<workdir>/<name>``):

==========================  ===================================================================
``vae``                     q(z|x) diagonal Gaussian, p(z) = N(0, I), ELBO (beta = 1)
``beta_<b>``                the same trained with beta * KL (the beta sweep, ``betas``)
``fixed_scale_<s>_beta_<b>``  q(z|x) = N(f(x), s^2 I) with s fixed: as s -> 0 the ELBO tends to
                            -inf and its gradient to the AE's (plus beta/2 ||f(x)||^2); with
                            beta -> 0 too, to the plain AE (``path``: pairs (s, beta))
``ae``                      q(z|x) = delta(z - f(x)), no p(z): log p(x | z = f(x))
``rae``                     the AE with ||f(x)||^2 and decoder-L2 penalties (Ghosh et al. 2020)
``dae``                     a denoising AE with walkback, sampled by its Markov chain (Bengio
                            et al. 2013)
``wae``, ``aae``            AEs whose codes are matched to p(z) = N(0, I) during training: the
                            Wasserstein AE with an MMD penalty (Tolstikhin et al. 2018) and the
                            adversarial AE (Makhzani et al. 2016), :mod:`vaegen.objectives.matching`
``vq``                      the VQ-VAE (van den Oord et al. 2017): discrete codes, no prior in
                            training; a categorical MADE fitted to its codes afterwards is its p(c)
                            (:mod:`vaegen.studies.vq`)
``made``                    MADE: no latent variable, exact log p(x)
``vae_2d``, ``ae_2d``       2-D latent variants for the latent map
==========================  ===================================================================

Rows of the table are (model, how it is sampled): the VAEs from their own p(z); the WAE and AAE from the N(0, I) they were trained to match; the AE and RAE
from N(0, I) attached ad hoc and from a 10-component full-covariance Gaussian mixture fitted to
their training codes (:mod:`vaegen.studies.expost`; the VAE gets one too); the DAE by its chain; MADE
pixel by pixel; and a ``data`` row (held-out images) that gives each sample metric's floor.

Metrics per row: test log p(x) (importance sampling for latent-variable models -- with q(z|x) as
proposal where it has a density, and the scale mixture around f(x) of
:class:`vaegen.studies.expost.CodeProposal` for autoencoders --, exact for MADE, and the reason where it
does not exist); the ELBO where the model has one; reconstruction log p(x | z = E_q[z|x]); the
Frechet distance, precision and recall in the feature space of a classifier trained on the same
data (:mod:`vaegen.studies.metrics`: a dataset-specific metric, not FID); the classifier's confidence and
the number of classes the samples cover; and the prior mass where no code lies.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import platform
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vaegen import sharding as sharding_lib
from vaegen.config import loading as config_lib
from vaegen.config.schema import RunSpec
from vaegen.data import datasets
from vaegen.data import splits as splits_lib
from vaegen.errors import ConfigError
from vaegen.estimators import importance as importance_lib
from vaegen.objectives import denoising
from vaegen.objectives.bounds import ELBO
from vaegen.objectives.exact import ExactLogLikelihood
from vaegen.runs import evaluate as evaluate_lib
from vaegen.runs.run import Run
from vaegen.studies import expost as expost_lib
from vaegen.studies import metrics as metrics_lib
from vaegen.studies import vq as vq_lib
from vaegen.train import trainer as trainer_lib

PRESETS = ("tiny", "quick", "full")
DENSITY_LABELS = {"flow": "flow", "two_stage": "second-stage VAE", "diffusion": "diffusion"}
BEST = "best"
"""In ``expost.rae_densities``: the density that makes the AE most generative (:func:`resolve_best`)."""


# --- the study's settings -----------------------------------------------------------------------

def study_config(preset: str = "quick") -> ml_collections.ConfigDict:
    """The settings of a study preset (locked ConfigDict; change keys with :func:`load_study`).

    ``quick``: Fashion-MNIST, the ``vae_mlp_fmnist`` networks, few epochs and a test subset --
    minutes on a CPU.  ``full``: the same models trained for long, many more samples, k = 1000 on
    the whole test set, a wider sweep -- for a GPU.  ``tiny``: scikit-learn's 8x8 digits, for tests.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown study preset {preset!r}; choose one of {', '.join(PRESETS)}")
    s = ml_collections.ConfigDict()
    s.preset = preset
    s.base = "vae_mlp_fmnist"  # the config preset every model starts from (data, nets, likelihood, optimiser)
    s.seed = 0
    s.epochs = 4  # training epochs of every model
    s.betas = (0.1, 4.0)  # the beta-VAE sweep (beta = 1 is the vae)
    # Fixed-variance VAEs (posterior_scale, beta) on the way to the AE: s -> 0 (and beta -> 0 too).
    s.path = ((0.1, 1.0), (0.01, 1.0))
    s.rae = ml_collections.ConfigDict({"code_penalty": 1.0, "decoder_l2": 1e-3})
    # Walkback matters: with at most 3 steps (continue 0.5) the chains collapse onto trousers within
    # 100 steps (FD 219 after 8 epochs); with 5 steps (continue 0.8) they move between classes (FD 67).
    # Each walkback step costs one more forward and backward pass.
    s.dae = ml_collections.ConfigDict({"corruption": "salt_and_pepper", "noise_level": 0.3, "walkback_steps": 4,
                                       "walkback_continue": 0.8, "chain_steps": 50})
    s.made = ml_collections.ConfigDict({"hidden": (500,)})
    # AEs matched to N(0, I) in training (vaegen.objectives.matching); the other settings are the objectives' defaults.
    # lambda: 100 gave the WAE the highest log p(x) and the smallest Frechet distance between its codes and N(0, I) of
    # 10, 100, 1000 (4 epochs, 500 test images; README); the AAE's weight 10 moved its codes further toward N(0, I)
    # than 1.
    s.wae = ml_collections.ConfigDict({"enabled": True, "mmd_weight": 100.0})
    s.aae = ml_collections.ConfigDict({"enabled": True, "adversarial_weight": 10.0})
    # Discrete codes with a prior learned afterwards: 10 positions of 5 from 512 codes (the vq_mlp_fmnist preset), the
    # categorical MADE over them fitted by the trainer (early-stopped on held-out codes), log p(x) with the proposal
    # temperature tau (vaegen.studies.vq).
    s.vq = ml_collections.ConfigDict({"enabled": True, "codebook_size": 512, "code_dim": 5, "ema": True,
                                      "ema_decay": 0.99, "dead_code_threshold": 0.05, "commitment": 0.25,
                                      "temperature": 3.0, "max_codes": 10000,
                                      "fit": {"epochs": 30, "batch_size": 256, "learning_rate": 1e-3, "patience": 3},
                                      "prior_hidden": (500,)})
    s.latent_map = ml_collections.ConfigDict({"enabled": True, "epochs": 3})  # 2-D variants of the VAE and AE
    s.expost = ml_collections.ConfigDict({"num_components": 10, "max_codes": 5000, "bayesian": True})
    # The learned ex-post densities (vaegen.blocks.densities), fitted by the trainer to the same codes: rows
    # AE + each, VAE + each, RAE + those in rae_densities: "best" is the density (GMM or learned) whose AE row has
    # the highest test log p(x), chosen when the RAE's rows are measured (resolve_best; the diffusion rows' ‡ values
    # are not ranked).
    s.expost.densities = ("flow", "two_stage", "diffusion")
    s.expost.rae_densities = ("best",)
    # At most 100 epochs, early-stopped on held-out codes (patience 5): flows overfit 4,500 codes in 50-D.
    s.expost.fit = ml_collections.ConfigDict({"epochs": 100, "batch_size": 256, "learning_rate": 1e-3, "patience": 5})
    s.expost.flow = ml_collections.ConfigDict({"kind": "autoregressive", "layers": 5, "hidden": (128, 128)})
    s.expost.two_stage = ml_collections.ConfigDict({"hidden": (256, 256), "is_samples": 32})
    s.expost.diffusion = ml_collections.ConfigDict({"hidden": (256, 256), "bound_samples": 32, "sample_steps": 100,
                                                    "schedule": "fixed"})
    s.eval = ml_collections.ConfigDict()
    s.eval.k = 100  # importance samples per test image for log p(x)
    s.eval.max_test_examples = 500  # test images for log p(x) and reconstruction (0 = all)
    s.eval.num_samples = 2000  # samples per row for the sample metrics (and reference images)
    s.eval.nn_k = 3  # k of the k-NN balls (precision, recall, prior mass off the codes)
    s.eval.num_codes = 5000  # training codes (aggregate-posterior draws) for the k-NN balls
    s.eval.num_prior_samples = 2000  # z ~ p(z) tested against the codes
    s.classifier_epochs = 5  # the feature classifier's recipe (vaegen.studies.metrics.CLASSIFIER_RECIPE)
    if preset == "full":
        s.epochs = 100
        s.betas = (0.1, 0.5, 2.0, 4.0)
        s.path = ((1.0, 1.0), (0.3, 1.0), (0.1, 1.0), (0.03, 1.0), (0.01, 1.0), (0.1, 0.1), (0.01, 0.01))
        s.dae.walkback_steps = 10
        s.dae.chain_steps = 1000
        s.made.hidden = (1000, 1000)
        s.latent_map.epochs = 50
        s.expost.max_codes = 50000
        s.eval.k = 1000
        s.eval.max_test_examples = 0
        s.eval.num_samples = 10000
        s.eval.num_codes = 20000
        s.eval.num_prior_samples = 10000
    elif preset == "tiny":
        s.base = "tiny"
        s.epochs = 2
        s.betas = ()
        s.path = ((0.1, 1.0),)
        s.dae.walkback_steps = 2
        s.dae.chain_steps = 4
        s.made.hidden = (32,)
        s.latent_map.epochs = 2
        s.expost.num_components = 3
        s.expost.max_codes = 400
        s.expost.densities = ("flow",)   # one learned density keeps the tiny study (and its tests) short
        s.expost.rae_densities = ()
        s.expost.fit.epochs = 2
        s.expost.fit.batch_size = 50
        s.expost.flow.hidden = (16,)
        s.expost.flow.layers = 2
        s.expost.two_stage.hidden = (16,)
        s.expost.two_stage.is_samples = 4
        s.expost.diffusion.hidden = (16,)
        s.expost.diffusion.bound_samples = 4
        s.expost.diffusion.sample_steps = 5
        s.vq.codebook_size = 4
        s.vq.code_dim = 2
        s.vq.max_codes = 400
        s.vq.fit.epochs = 2
        s.vq.fit.batch_size = 50
        s.vq.prior_hidden = (16,)
        s.eval.k = 4
        s.eval.max_test_examples = 40
        s.eval.num_samples = 64
        s.eval.num_codes = 300
        s.eval.num_prior_samples = 100
        s.classifier_epochs = 1
    return s


def load_study(preset: str = "quick", settings: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """A study preset with ``key=value`` settings applied (typed literals, unknown keys are errors)."""
    s = study_config(preset)
    s.lock()
    config_lib.apply_overrides(s, settings)
    if s.epochs < 1 or s.latent_map.epochs < 1:
        raise ConfigError("study epochs must be >= 1")
    for name in (*s.expost.densities, *s.expost.rae_densities):
        if name not in expost_lib.LEARNED_DENSITIES and not (name == BEST and name in s.expost.rae_densities):
            raise ConfigError(f"expost.densities: unknown density {name!r}; choose from "
                              f"{', '.join(expost_lib.LEARNED_DENSITIES)}")
    for b in s.betas:
        if b <= 0:
            raise ConfigError(f"betas must be > 0, got {b}")
    for pair in s.path:
        if len(pair) != 2 or pair[0] <= 0 or pair[1] <= 0:
            raise ConfigError(f"path entries are (posterior_scale > 0, beta > 0), got {pair}")
    for key in ("k", "num_samples", "nn_k", "num_codes", "num_prior_samples"):
        if s.eval[key] < 1:
            raise ConfigError(f"eval.{key} must be >= 1")
    if s.eval.num_samples <= s.eval.nn_k or s.eval.num_codes <= s.eval.nn_k:
        raise ConfigError("eval.num_samples and eval.num_codes must exceed eval.nn_k")
    return s


# --- variants (trained models) and rows (how each is sampled) -------------------------------------

@dataclasses.dataclass(frozen=True)
class Variant:
    """One trained model: ``overrides`` on the study's base config."""

    name: str
    label: str
    overrides: tuple[str, ...]
    epochs: int
    group: str  # vae | beta | path | ae | rae | matched | vq | dae | made | map


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: a variant and the distribution its samples come from.

    ``prior``: ``own`` (the model's p(z)), ``standard_normal`` (attached ad hoc to an AE),
    ``expost_mixture`` (fitted to the codes), ``none`` (the AE as trained: no p(z)), ``chain``
    (the DAE's Markov chain), ``exact`` (autoregressive), ``data`` (held-out images)."""

    name: str
    label: str
    variant: str | None
    prior: str
    sampled_from: str


AE_POSTERIOR = ("model.prior=none", "inference.posterior=point_mass")
AE_OVERRIDES = AE_POSTERIOR + ("objective=ae",)


def _g(v: float) -> str:
    return f"{v:g}"


def variants(study: ml_collections.ConfigDict) -> list[Variant]:
    e = int(study.epochs)
    out = [Variant("vae", "VAE", (), e, "vae")]
    for b in study.betas:
        out.append(Variant(f"beta_{_g(b)}", f"β-VAE β={_g(b)}", (f"objective.beta={b!r}",), e, "beta"))
    for s, b in study.path:
        out.append(Variant(f"fixed_scale_{_g(s)}_beta_{_g(b)}", f"VAE σ={_g(s)} fixed, β={_g(b)}",
                           ("inference.posterior=fixed_scale_gaussian", f"inference.posterior.scale={s!r}",
                            f"objective.beta={b!r}"), e, "path"))
    out.append(Variant("ae", "AE", AE_OVERRIDES, e, "ae"))
    out.append(Variant("rae", "RAE", AE_POSTERIOR + ("objective=rae", f"objective.code_penalty={study.rae.code_penalty!r}",
                                                   f"objective.decoder_l2={study.rae.decoder_l2!r}"), e, "rae"))
    if study.wae.enabled:
        out.append(Variant("wae", "WAE-MMD", ("inference.posterior=point_mass", "objective=wae",
                                               f"objective.mmd_weight={study.wae.mmd_weight!r}"), e, "matched"))
    if study.aae.enabled:
        out.append(Variant("aae", "AAE", ("inference.posterior=point_mass", "objective=aae",
                                          f"objective.adversarial_weight={study.aae.adversarial_weight!r}"), e, "matched"))
    if study.vq.enabled:
        q = study.vq
        out.append(Variant("vq", "VQ-VAE", (
            "model.kind=vq_vae", f"model.kind.codebook_size={q.codebook_size!r}", f"model.kind.code_dim={q.code_dim!r}",
            f"model.kind.ema={q.ema!r}", f"model.kind.ema_decay={q.ema_decay!r}",
            f"model.kind.dead_code_threshold={q.dead_code_threshold!r}", "model.prior=none",
            "inference.posterior=point_mass", "objective=vq", f"objective.commitment={q.commitment!r}"), e, "vq"))
    d = study.dae
    out.append(Variant("dae", "DAE (walkback)", AE_POSTERIOR + (
        "objective=dae", f"objective.corruption={d.corruption}", f"objective.noise_level={d.noise_level!r}",
        f"objective.walkback_steps={d.walkback_steps!r}", f"objective.walkback_continue={d.walkback_continue!r}"), e, "dae"))
    out.append(Variant("made", "MADE", ("model.kind=autoregressive", "objective=exact",
                                        f"model.kind.hidden={tuple(study.made.hidden)!r}"), e, "made"))
    if study.latent_map.enabled:
        m = int(study.latent_map.epochs)
        out.append(Variant("vae_2d", "VAE, 2-D z", ("model.latent_dim=2",), m, "map"))
        out.append(Variant("ae_2d", "AE, 2-D z", AE_OVERRIDES + ("model.latent_dim=2",), m, "map"))
    return out


def rows(study: ml_collections.ConfigDict) -> list[Row]:
    out = [Row("data", "data (held-out images)", None, "data", "validation split")]
    for v in variants(study):
        if v.group in ("vae", "beta", "path"):
            out.append(Row(v.name, v.label, v.name, "own", "N(0, I)"))
            if v.group == "vae":
                out.append(Row("vae+gmm", "VAE + ex-post GMM", "vae", "expost_mixture", "GMM on codes"))
                for d in study.expost.densities:
                    out.append(Row(f"vae+{d}", f"VAE + ex-post {DENSITY_LABELS[d]}", "vae", d, f"{DENSITY_LABELS[d]} on codes"))
        elif v.group in ("ae", "rae"):
            if v.group == "ae":
                out.append(Row("ae", "AE", "ae", "none", "nothing (no p(z))"))
            out.append(Row(f"{v.name}+n01", f"{v.label} + N(0, I)", v.name, "standard_normal", "N(0, I), ad hoc"))
            out.append(Row(f"{v.name}+gmm", f"{v.label} + ex-post GMM", v.name, "expost_mixture", "GMM on codes"))
            for d in (study.expost.densities if v.group == "ae" else study.expost.rae_densities):
                if d == BEST:
                    out.append(Row(f"{v.name}+{BEST}", f"{v.label} + the AE's best ex-post density", v.name, BEST,
                                   "the AE's best density on codes"))
                    continue
                out.append(Row(f"{v.name}+{d}", f"{v.label} + ex-post {DENSITY_LABELS[d]}", v.name, d,
                               f"{DENSITY_LABELS[d]} on codes"))
        elif v.group == "matched":
            out.append(Row(v.name, v.label, v.name, "standard_normal", "N(0, I), matched in training"))
        elif v.group == "vq":
            out.append(Row(f"{v.name}+prior", f"{v.label} + code prior", v.name, vq_lib.CODE_PRIOR,
                           "categorical MADE on codes"))
        elif v.group == "dae":
            out.append(Row("dae", v.label, "dae", "chain", "its Markov chain"))
        elif v.group == "made":
            out.append(Row("made", "MADE (no z)", "made", "exact", "p(x_d | x_<d), pixel by pixel"))
    return out


def resolve_best(row: Row, measured: Sequence[Row], results: dict[str, Any]) -> Row | None:
    """The row ``<variant>+best`` as the density it stands for: the ex-post density (GMM or learned) whose AE row
    has the highest mean test log p(x) among the rows measured so far (a diffusion row's ‡ value, a bound up to a
    Monte Carlo bias, is not ranked).  None when that density already has a row of this variant (the GMM's) or
    no AE density row was measured."""
    candidates = [r for r in measured if r.variant == "ae" and r.prior in ("expost_mixture", *expost_lib.LEARNED_DENSITIES)
                  and r.prior != "diffusion" and "log_px" in results.get(r.name, {})]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: results[r.name]["log_px"]["mean"])
    if best.prior == "expost_mixture":
        return None  # the variant's GMM row is in the table already
    d = best.prior
    return Row(f"{row.variant}+{d}", f"{row.label.split(' + ')[0]} + ex-post {DENSITY_LABELS[d]}", row.variant, d,
               f"{DENSITY_LABELS[d]} on codes (the AE's best)")


def model_config(study: ml_collections.ConfigDict, variant: Variant, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The full vaegen config of a variant: the base preset, the user's overrides, the variant's."""
    every = max(1, min(5, variant.epochs))  # checkpoints every 5 epochs (and at the end): resumable, not slow
    return config_lib.load_config(study.base, [*overrides, *variant.overrides, f"seed={int(study.seed)}",
                                               f"train.num_epochs={variant.epochs}", "train.progress=False",
                                               f"train.checkpoint_every_epochs={every}"])


# --- context shared by the rows ------------------------------------------------------------------

@dataclasses.dataclass
class Context:
    study: ml_collections.ConfigDict
    workdir: pathlib.Path
    splits: datasets.Splits
    base_spec: RunSpec
    runs: dict[str, Run]
    space: metrics_lib.FeatureSpace
    x_test: jax.Array          # [M, *event]: test images for log p(x) and reconstructions
    reference: np.ndarray      # [S, *event]: the reference images of the sample metrics (test split)
    reference_features: np.ndarray
    key: jax.Array
    codes: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    mixtures: dict[str, expost_lib.Mixture] = dataclasses.field(default_factory=dict)
    densities: dict[tuple[str, str], expost_lib.DensityFit] = dataclasses.field(default_factory=dict)
    fit_seconds: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    code_priors: dict[str, Any] = dataclasses.field(default_factory=dict)


def eval_split(spec: RunSpec, split: str, n: int) -> jax.Array:
    x_u8 = getattr(trainer_lib.load_data(spec), split)
    if n:
        x_u8 = x_u8[:n]
    return jnp.asarray(splits_lib.model_view(spec.data, x_u8, split))


def codes_of(ctx: Context, name: str) -> dict[str, np.ndarray]:
    """Training codes (aggregate-posterior draws) and held-out codes of a latent variant."""
    if name not in ctx.codes:
        run = ctx.runs[name]
        ev = ctx.study.eval
        n_train = max(int(ev.num_codes), int(ctx.study.expost.max_codes))
        x_train = expost_lib.training_images(run, max_examples=n_train, seed=int(ctx.study.seed))
        key = jax.random.fold_in(ctx.key, 11)
        train = expost_lib.encode_codes(run.model, run.variables, x_train, key)
        held = expost_lib.encode_codes(run.model, run.variables, eval_split(run.spec, "test", int(ev.num_prior_samples)),
                                       jax.random.fold_in(key, 1))
        ctx.codes[name] = {"train": train, "test": held}
    return ctx.codes[name]


def density_of(ctx: Context, name: str, density: str) -> expost_lib.DensityFit:
    """The learned density ``density`` fitted by the trainer to variant ``name``'s training codes (the
    first ``expost.max_codes``; the last 10% held out for its held-out log p(z)), in
    ``<variant>/expost/<density>/fit`` (reused when already fitted)."""
    if (name, density) not in ctx.densities:
        run = ctx.runs[name]
        e = ctx.study.expost
        codes = codes_of(ctx, name)["train"][: int(e.max_codes)]
        cut = int(0.9 * codes.shape[0])
        fit = expost_lib.FitSettings(epochs=int(e.fit.epochs), batch_size=min(int(e.fit.batch_size), cut),
                                     learning_rate=float(e.fit.learning_rate), seed=int(ctx.study.seed),
                                     density=dict(e[density].to_dict()), patience=int(e.fit.patience))
        info = {"codes_are": "f(x), point-mass codes" if run.is_autoencoder else "z ~ q(z | x)",
                "validation_codes_from": "the last 10% of the training codes"}
        t = time.perf_counter()
        ctx.densities[(name, density)] = expost_lib.fit_density(
            codes[:cut], codes[cut:], density, pathlib.Path(run.workdir) / "expost" / density / "fit", fit, info=info)
        ctx.fit_seconds[(name, density)] = time.perf_counter() - t
    return ctx.densities[(name, density)]


def fit_time(ctx: Context, name: str, density: str) -> float:
    """Seconds the fit took: the trainer's epochs and compilation (metrics.jsonl), so that a reused fit
    reports the time it took when it was made."""
    return train_seconds(ctx.densities[(name, density)].workdir)


def mixture_of(ctx: Context, name: str) -> expost_lib.Mixture:
    if name not in ctx.mixtures:
        run = ctx.runs[name]
        e = ctx.study.expost
        codes = codes_of(ctx, name)["train"][: int(e.max_codes)]
        ctx.mixtures[name] = expost_lib.fit_or_load(codes, pathlib.Path(run.workdir) / "expost",
                                                    num_components=int(e.num_components), seed=int(ctx.study.seed),
                                                    bayesian=bool(e.bayesian))
    return ctx.mixtures[name]


def code_prior_of(ctx: Context, name: str) -> Any:
    """The categorical MADE fitted by the trainer to VQ variant ``name``'s training codes (the first
    ``vq.max_codes`` training images; 10% held out), in ``<variant>/expost/code_prior/fit`` (reused when
    already fitted)."""
    if name not in ctx.code_priors:
        q = ctx.study.vq
        fit = expost_lib.FitSettings(epochs=int(q.fit.epochs), batch_size=int(q.fit.batch_size),
                                     learning_rate=float(q.fit.learning_rate), max_codes=int(q.max_codes),
                                     seed=int(ctx.study.seed), patience=int(q.fit.patience),
                                     density={"hidden": tuple(q.prior_hidden)})
        ctx.code_priors[name] = vq_lib.fit_code_prior(ctx.runs[name], fit)
    return ctx.code_priors[name]


def generative_run(ctx: Context, row: Row) -> Run | None:
    """The row's model as a latent-variable model with a prior (None for rows without one)."""
    if row.prior == "own":
        return ctx.runs[row.variant]
    if row.prior == vq_lib.CODE_PRIOR:
        return vq_lib.generative(ctx.runs[row.variant], code_prior_of(ctx, row.variant))
    if row.prior in ("standard_normal", "expost_mixture", *expost_lib.LEARNED_DENSITIES):
        run = ctx.runs[row.variant]
        code_scale = codes_of(ctx, row.variant)["train"].std(0)
        mixture = mixture_of(ctx, row.variant) if row.prior == "expost_mixture" else None
        density = density_of(ctx, row.variant, row.prior) if row.prior in expost_lib.LEARNED_DENSITIES else None
        return expost_lib.generative(run, row.prior, mixture=mixture, density=density, code_scale=code_scale)
    return None


def _sample(ctx: Context, row: Row, n: int, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(x [n, *event], display [n, *event])``: samples and the images to show (E[x|z], the
    conditional probabilities of MADE, the mean of the DAE's last reconstruction)."""
    if row.prior == "data":
        x = np.asarray(eval_split(ctx.base_spec, "validation", n))
        return x, x
    if row.prior == "chain":
        run, d = ctx.runs["dae"], ctx.study.dae
        out = dae_chain(run, key, n, num_steps=int(d.chain_steps))
        return np.asarray(out["x"]), np.asarray(out["mean"])
    if row.prior == "exact":
        run = ctx.runs["made"]
        x, probs = jax.jit(lambda v, k: run.model.apply(v, k, n, method="sample_with_probs"))(run.variables, key)
        return np.asarray(x), np.asarray(probs)
    gen = generative_run(ctx, row)
    x, mean = _ancestral(gen.model, n, gen.variables, key)
    return np.asarray(x), np.asarray(mean)


# Jitted with the (hashable) model as a static argument: models with equal structure (the VAE and
# the beta-VAEs, say) share one compilation.

@functools.partial(jax.jit, static_argnums=(0, 1))
def _ancestral(model, n: int, variables, key):
    """z ~ p(z), x ~ p(x | z): ``(x [n, *event], E[x | z] [n, *event])``."""
    def f(m):
        z, x = m.sample_with_latents(key, n)
        return x, m.p_x_given_z(z).mean()

    return model.apply(variables, method=f)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _prior_draws(model, n: int, variables, key):
    """z ~ p(z): ``[n, D]``."""
    return model.apply(variables, method=lambda m: m.p_z().sample(seed=key, sample_shape=(n,)))


def _per_example(model, objective, batch_size: int, variables, x, key):
    """``objective`` on every row of ``x [M, *event]``, example i with ``fold_in(key, i)``:
    per-example terms ``[M]``."""
    return evaluate_lib.objective_terms(model, variables, objective, x, key, batch_size=batch_size)


@dataclasses.dataclass(frozen=True)
class _Reconstruction:
    """log p(x | z = E_q[z|x]) of one example."""

    model: Any

    def __call__(self, variables, x, key):
        del key
        return self.model.apply(variables, method=lambda m: m.log_likelihood(x, m.q_z_given_x(x).mean()))


def _reconstruction_terms(model, batch_size: int, variables, x):
    """log p(x | z = E_q[z|x]) per row of ``x``: ``[M]``."""
    fn = jax.tree_util.Partial(_Reconstruction(model), variables)
    return sharding_lib.map_examples(fn, jnp.asarray(x), jax.random.key(0), batch_size=batch_size)


def log_px_is(run: Run, x: jax.Array, key: jax.Array, *, k: int, with_elbo: bool) -> dict[str, Any]:
    """Importance-sampled log p(x) (k samples from the model's q(z|x), :mod:`vaegen.estimators`)
    and optionally the ELBO, per example over ``x [M, *event]``, summarised in nats (as
    :func:`vaegen.evaluate`)."""
    dims = int(np.prod(run.event_shape))
    out = {}
    log_joint, proposal = importance_lib.model_functions(run.model, run.variables)
    est = importance_lib.importance_sampling(log_joint, proposal, x, jax.random.fold_in(key, 1), num_samples=k)
    out["log_px"] = evaluate_lib.summarize(np.asarray(est["log_px"]), dims)
    if with_elbo:
        el = _per_example(run.model, ELBO(), min(500, x.shape[0]), run.variables, x, jax.random.fold_in(key, 0))
        out["elbo"] = evaluate_lib.summarize(np.asarray(el["elbo"]), dims)
        out["kl"] = evaluate_lib.summarize(np.asarray(el["kl"]), None)
    return out


def dae_chain(run: Run, key: jax.Array, n: int, *, num_steps: int, keep_every: int = 0) -> dict[str, jax.Array]:
    """The DAE's Markov chain with the corruption it was trained with, from uniform noise."""
    o = run.spec.objective.settings
    return denoising.sample_chain(run.model, run.variables, key, n, num_steps=num_steps, corruption=o.corruption,
                                  noise_level=o.noise_level, event_shape=run.event_shape, keep_every=keep_every)


def _reconstruction(run: Run, x: jax.Array) -> dict[str, float]:
    """log p(x | z = E_q[z|x]) in nats over ``x [M, *event]``."""
    terms = _reconstruction_terms(run.model, min(500, x.shape[0]), run.variables, x)
    return evaluate_lib.summarize(np.asarray(terms), int(np.prod(run.event_shape)))


def _num_params(tree: Any) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(tree)))


def num_params(run: Run) -> dict[str, int]:
    """Parameters of the generative model (everything but q(z|x)) and in all."""
    generative = {k: v for k, v in run.variables["params"].items() if k != "posterior"}
    return {"generative": _num_params(generative), "total": _num_params(run.variables)}


def evaluate_row(ctx: Context, row: Row) -> dict[str, Any]:
    """Every metric of one row (see the module docstring); JSON-able."""
    ev = ctx.study.eval
    key = jax.random.fold_in(ctx.key, int(hashlib.sha256(row.name.encode()).hexdigest()[:7], 16))
    out: dict[str, Any] = {"row": dataclasses.asdict(row)}
    if row.variant:
        out["point_mass"] = ctx.runs[row.variant].is_autoencoder
    t0 = time.perf_counter()
    n_test = int(ctx.x_test.shape[0])

    # Test log p(x) and the ELBO.
    if row.prior == "data":
        out["log_px_undefined"] = "the data are not a model"
    elif row.prior == "none":
        out["log_px_undefined"] = evaluate_lib.UNDEFINED_FOR_AE["log_px"]
        out["elbo_undefined"] = evaluate_lib.UNDEFINED_FOR_AE["elbo"]
    elif row.prior == "chain":
        out["log_px_undefined"] = ("no tractable density: p(x) is the stationary distribution of the Markov chain, "
                                   "known only through its samples")
    elif row.prior == "exact":
        made = ctx.runs["made"]
        terms = _per_example(made.model, ExactLogLikelihood(), min(500, n_test), made.variables,
                             ctx.x_test, key)
        out["log_px"] = dict(evaluate_lib.summarize(np.asarray(terms["log_px"]), int(np.prod(made.event_shape))),
                             estimator="exact")
    elif row.prior == vq_lib.CODE_PRIOR:
        gen = generative_run(ctx, row)
        temperature = float(ctx.study.vq.temperature)
        r = vq_lib.log_px(gen, ctx.x_test, jax.random.fold_in(key, 3), k=int(ev.k), temperature=temperature)
        dims = int(np.prod(gen.event_shape))
        out["log_px"] = dict(evaluate_lib.summarize(r["is"], dims),
                             estimator=f"IS over codes, k={int(ev.k)}: the encoder's code c* exactly, the rest from "
                                       f"prod_m softmax(-‖z_e,m − e_k‖² / {temperature:g})",
                             meaning=vq_lib.LOG_PX_MEANING["is"])
        # q(c | x) is a point mass on the discrete c*: its ELBO is log p(x, c*), the deterministic bound.
        out["elbo"] = dict(evaluate_lib.summarize(r["bound"], dims), meaning=vq_lib.LOG_PX_MEANING["bound"])
        out["log_p_code"] = evaluate_lib.summarize(r["log_p_code"], None)
        out["reconstruction"] = evaluate_lib.summarize(r["reconstruction"], dims)
        fitted = code_prior_of(ctx, row.variant)
        out["code_prior"] = {k: v for k, v in fitted.info.items() if k != "train_metrics"}
        out["fit_seconds"] = train_seconds(fitted.workdir)
        out["codebook_usage"] = vq_lib.codebook_usage(ctx.runs[row.variant], ctx.x_test)
    else:
        gen = generative_run(ctx, row)
        m = log_px_is(gen, ctx.x_test, jax.random.fold_in(key, 3), k=int(ev.k), with_elbo=row.prior == "own")
        proposal = ("q(z|x)" if not ctx.runs[row.variant].is_autoencoder
                    else "scale mixture of N(f(x), (s·σ_codes)²), s ∈ {" + ", ".join(_g(s) for s in expost_lib.DEFAULT_RELATIVE_SCALES) + "}")
        out["log_px"] = dict(m["log_px"], estimator=f"IS, k={int(ev.k)}, proposal {proposal}",
                             meaning=expost_lib.LOG_PX_MEANING.get(row.prior, expost_lib.LOG_PX_MEANING["gmm"]))
        if row.prior == "own":
            out["elbo"] = m["elbo"]
            out["kl"] = m["kl"]
    out["seconds_log_px"] = time.perf_counter() - t0

    # Reconstruction log p(x | z = E_q[z|x]) of the trained model.
    if row.variant and row.prior not in ("exact", vq_lib.CODE_PRIOR):
        out["reconstruction"] = _reconstruction(ctx.runs[row.variant], ctx.x_test)

    # Samples and their quality in the classifier's feature space.
    if row.prior != "none":
        t = time.perf_counter()
        x, display = _sample(ctx, row, int(ev.num_samples), jax.random.fold_in(key, 1))
        out["seconds_sampling"] = time.perf_counter() - t
        out["samples"] = metrics_lib.sample_quality(ctx.space, x, ctx.reference_features, k=int(ev.nn_k))
        np.savez_compressed(ctx.workdir / "rows" / f"{row.name}.samples.npz", display=display[:64].astype(np.float16),
                            x=x[:64].astype(np.uint8) if row.prior != "data" else x[:64].astype(np.float16))

    # The aggregate posterior against the prior the samples come from.
    if row.prior in ("own", "standard_normal", "expost_mixture", *expost_lib.LEARNED_DENSITIES):
        codes = codes_of(ctx, row.variant)
        gen = generative_run(ctx, row)
        z = np.asarray(_prior_draws(gen.model, int(ev.num_prior_samples), gen.variables, jax.random.fold_in(key, 2)))
        k = int(ev.nn_k)
        train_codes = codes["train"][: int(ev.num_codes)]
        radii = metrics_lib.knn_radii(train_codes, k)
        out["prior_mass_off_codes"] = float(1 - np.mean(metrics_lib.manifold_coverage(train_codes, z, k=k, radii=radii)))
        out["held_out_codes_off_codes"] = float(1 - np.mean(metrics_lib.manifold_coverage(train_codes, codes["test"], k=k,
                                                                                          radii=radii)))
        out["latent_fd"] = metrics_lib.frechet_distance(train_codes, z)
        out["code_mean_norm_sq"] = float(np.mean(np.sum(train_codes**2, -1)))
        out["prior_mean_norm_sq"] = float(np.mean(np.sum(z**2, -1)))
        if row.prior == "expost_mixture":
            out["mixture"] = mixture_of(ctx, row.variant).info
            out["fit_seconds"] = out["mixture"].get("fit_seconds")
        if row.prior in expost_lib.LEARNED_DENSITIES:
            fitted = density_of(ctx, row.variant, row.prior)
            out["density"] = {k: v for k, v in fitted.info.items() if k != "train_metrics"}
            out["fit_seconds"] = fit_time(ctx, row.variant, row.prior)
    if row.variant:
        out["num_params"] = num_params(ctx.runs[row.variant])
        out["train_seconds"] = train_seconds(ctx.runs[row.variant].workdir)
    out["seconds"] = time.perf_counter() - t0
    return out


def train_seconds(workdir: str | os.PathLike) -> float:
    """Time spent training a run: the sum of its epochs' seconds and compile time (metrics.jsonl)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return float("nan")
    total = 0.0
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            total += float(r.get("epoch_seconds", 0.0)) + float(r.get("compile_seconds", 0.0))
    return total


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__}


def row_summary(res: dict[str, Any]) -> str:
    parts = []
    if "log_px" in res:
        parts.append(f"log p(x) {res['log_px']['mean']:.1f}")
    if "samples" in res:
        parts.append(f"FD {res['samples']['fd']:.2f}")
    if "prior_mass_off_codes" in res:
        parts.append(f"off-codes {res['prior_mass_off_codes']:.2f}")
    return ", ".join(parts) or "no metrics"


def fingerprint(obj: Any) -> str:
    """A short hash of a JSON-able object (what a cached row was computed from)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
