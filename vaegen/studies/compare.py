"""The headline study: why a VAE is a generative model and an AE is not, and what makes an AE one.

``vaegen compare --preset quick --workdir runs/compare`` trains every model below with the same
trainer, the same networks (encoder and decoder trunks, latent size) and the same likelihood
p(x | z), evaluates them on the same test images, and writes ``report/report.md`` with PNG
figures: prior samples side by side, reconstructions, a 2-D latent map with the prior's contours
over the codes, interpolations, the DAE's Markov chain, the metric table and a short answer to
the question, worded from the measured numbers.

Models (variants, each an ordinary vaegen run in ``<workdir>/<name>``; :func:`variants`):

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
``dvae``                    a discrete VAE: M categorical variables, q(z|x) and p(z) categorical, trained
                            jointly on the ELBO (Gumbel-softmax gradients; :mod:`vaegen.objectives.discrete`)
``made``                    MADE: no latent variable, exact log p(x)
``vae_2d``, ``ae_2d``       2-D latent variants for the latent map
==========================  ===================================================================

Every variant is the base preset's typed run spec with typed component choices
(:class:`Variant`).  The rows of the table are (variant, recipe) pairs (:func:`rows`): a recipe is a
registered way of getting p(x) from a trained run (:mod:`vaegen.runs.recipes`) -- the model's own
prior, N(0, I) attached ad hoc, a density fitted to the codes afterwards, a prior over discrete
codes, the DAE's chain, MADE's exact likelihood --, and everything a row says about what its
numbers are (label, what it is sampled from, what its log p(x) is) comes from the recipe's
declaration.  A ``data`` row (held-out images) gives each sample metric's floor.

Metrics per row: test log p(x) (as its recipe measures it, labelled), the ELBO where the model has
one, reconstruction log p(x | z = E_q[z|x]), the Frechet distance, precision and recall in the
feature space of a classifier trained on the same data (:mod:`vaegen.studies.metrics`: a
dataset-specific metric, not FID), the classifier's confidence and the number of classes the
samples cover, and the prior mass where no code lies.
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

from vaegen import files as files_lib
from vaegen import sharding as sharding_lib
from vaegen.blocks import densities as densities_lib
from vaegen.config import loading as config_lib
from vaegen.config.schema import RunSpec, to_spec
from vaegen.data import datasets
from vaegen.data import splits as splits_lib
from vaegen.errors import CodingError, ConfigError, NoPriorError
from vaegen.model import code_prior as code_prior_model
from vaegen.registry import (OBJECTIVES, POSTERIORS, PRIORS, Selected, Settings, fields, parse, setting,
                             slot, to_mapping)
from vaegen.runs import codes as codes_lib
from vaegen.runs import compression as compression_lib
from vaegen.runs import evaluate as evaluate_lib
from vaegen.runs.recipes import RECIPES, Estimate, Fit, LogPx, Recipe, codes_kind
from vaegen.runs.recipes import code_prior as code_prior_lib
from vaegen.runs.recipes.learned import train_seconds
from vaegen.runs.run import Run
from vaegen.studies import metrics as metrics_lib
from vaegen.train import trainer as trainer_lib

PRESETS = ("tiny", "quick", "standard", "full")
COMMON_DRAWS = 5
"""The stream (``fold_in`` of the study's key) of the importance-sampling draws every row shares."""
BEST = "best"
"""In ``expost.rae_recipes``: the recipe that makes the AE most generative (:func:`resolve_best`)."""


# --- the study's settings -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StudyEvalSettings(Settings):
    """How every row is measured."""

    k: int = setting(100, "importance samples per test image for log p(x)", ge=1)
    max_test_examples: int = setting(500, "test images for log p(x) (0 = all)", ge=0)
    max_bound_examples: int = setting(500, "test images for the ELBO and the reconstruction, the first of which are "
                                      "log p(x)'s (0 = all)", ge=0)
    num_samples: int = setting(2000, "samples per row for the sample metrics (and reference test images)", ge=1)
    nn_k: int = setting(3, "k of the k-NN balls (precision, recall, prior mass off the codes)", ge=1)
    num_codes: int = setting(5000, "training codes (aggregate-posterior draws) for the k-NN balls", ge=1)
    num_prior_samples: int = setting(2000, "z ~ p(z) tested against the codes", ge=1)
    coded_examples: int = setting(200, "test images each model with a p(x) codes losslessly (vaegen.compress: the "
                                  "file's size beside the bound; 0 = none)", ge=0)

    def validate(self, key):
        if self.num_samples <= self.nn_k or self.num_codes <= self.nn_k:
            raise ConfigError(f"{key('num_samples')} and num_codes must exceed nn_k")
        if self.max_bound_examples and (not self.max_test_examples or self.max_bound_examples < self.max_test_examples):
            raise ConfigError(f"{key('max_bound_examples')}={self.max_bound_examples} must be 0 (all) or at least "
                              f"max_test_examples={self.max_test_examples}: log p(x)'s images are the first of the "
                              "bounds'")


@dataclasses.dataclass(frozen=True)
class StudyFitSettings(Settings):
    """Applied to every fitted recipe of the study that has these settings (the learned densities,
    the GMM's ``max_codes``); a recipe's own section sets the rest."""

    max_codes: int = setting(5000, "training codes each density is fitted to", gt=1)
    epochs: int = setting(100, "most epochs of a fit by the trainer (early-stopped on held-out codes)", gt=0)
    batch_size: int = setting(256, "batch of a fit by the trainer", gt=0)
    learning_rate: float = setting(1e-3, "Adam's learning rate of a fit by the trainer", gt=0)
    patience: int = setting(5, "early stopping of a fit: validations without improvement", ge=0)


@dataclasses.dataclass(frozen=True)
class ExpostStudySettings(Settings):
    """The densities fitted to codes afterwards: which rows they give and with what settings."""

    recipes: tuple[str, ...] = setting(("gmm", "flow", "two_stage", "diffusion"),
                                       "recipes fitted to the VAE's and the AE's codes: one row each")
    rae_recipes: tuple[str, ...] = setting(("gmm", BEST), "recipes fitted to the RAE's codes ('best': the one whose "
                                           "AE row has the highest log p(x), chosen when measured)")
    fit: StudyFitSettings = dataclasses.field(default_factory=StudyFitSettings)
    # The built-in recipes' settings in this study (a recipe without a section here takes its defaults).
    gmm: Selected = slot("recipe", "gmm", "the ex-post Gaussian mixture", components=10, bayesian=True)
    flow: Selected = slot("recipe", "flow", "the ex-post flow", density=densities_lib.FlowDensitySettings(
        kind="autoregressive", layers=5, hidden=(128, 128)))
    two_stage: Selected = slot("recipe", "two_stage", "the second-stage VAE", density=densities_lib.TwoStageSettings(
        hidden=(256, 256), is_samples=32))
    diffusion: Selected = slot("recipe", "diffusion", "the latent diffusion model",
                               density=densities_lib.DiffusionSettings(hidden=(256, 256), bound_samples=32,
                                                                       sample_steps=100, schedule="fixed"))

    def validate(self, key):
        for name in (*self.recipes, *self.rae_recipes):
            if name == BEST and name in self.rae_recipes:
                continue
            if name not in RECIPES:
                RECIPES.get(name, key("recipes"))          # one line naming the registered recipes
            component = RECIPES.get(name)
            if not component.trait("fitted") or "continuous_codes" not in component.trait("needs"):
                allowed = [c.name for c in RECIPES if c.trait("fitted")
                           and "continuous_codes" in c.trait("needs")]
                raise ConfigError(f"{key('recipes')}: {name!r} is not a density fitted to continuous codes; choose "
                                  f"from {', '.join(allowed)}")
        for name in self.rae_recipes:
            if name != BEST and name not in self.recipes:
                raise ConfigError(f"{key('rae_recipes')}: {name!r} must be one of expost.recipes or {BEST!r}")


@dataclasses.dataclass(frozen=True)
class VQStudySettings(Settings):
    enabled: bool = setting(True, "train the VQ-VAE and fit its code prior")
    kind: Selected = slot("model_kind", "vq_vae", "the VQ-VAE: 10 positions of 5 from 512 codes", codebook_size=512,
                          code_dim=5, ema=True, ema_decay=0.99, dead_code_threshold=0.05)
    objective: Selected = slot("objective", "vq", "its objective", commitment=0.25)
    recipe: Selected = slot("recipe", "code_prior", "the categorical MADE fitted to its codes (early-stopped)",
                            temperature=code_prior_lib.DEFAULT_TEMPERATURE, max_codes=10000, epochs=30, batch_size=256, learning_rate=1e-3, patience=3,
                            density=code_prior_model.CategoricalMADESettings(hidden=(500,)))


@dataclasses.dataclass(frozen=True)
class DiscreteStudySettings(Settings):
    """The discrete VAE beside the VQ-VAE: a categorical q(z|x) and p(z) trained jointly on the ELBO."""

    enabled: bool = setting(True, "train the discrete VAE")
    variables: int = setting(30, "M categorical variables (z: M one-hot vectors, the decoder reads [M K])", gt=0)
    categories: int = setting(10, "K categories of each", ge=2)
    objective: Selected = slot("objective", "discrete_elbo", "its objective and gradient estimator",
                               estimator="gumbel_softmax", temperature=1.0, temperature_min=0.5, anneal_rate=1e-4)


@dataclasses.dataclass(frozen=True)
class CompareSettings(Settings):
    """The study's settings: a preset (:func:`study_settings`) with ``--set KEY=VALUE`` changes."""

    preset: str = setting("quick", "the preset these settings started from", choices=PRESETS)
    base: str = setting("vae_mlp_fmnist", "the config preset every model starts from (data, nets, likelihood, optimiser)")
    seed: int = setting(0, "seed of the first training run of every model, and of the measurements", ge=0)
    seeds: int = setting(1, "training runs of every model (seeds seed, seed + 1, ...: other initialisations and data "
                         "orders, the same test images and importance-sampling draws)", gt=0)
    reference: str = setting("vae", "the row every row's paired differences are taken to")
    epochs: int = setting(4, "training epochs of every model (the most, with early stopping)", gt=0)
    patience: int = setting(0, "early stopping of every model on its validation objective: validations without "
                            "improvement before it stops, the best parameters kept (0 = train every epoch)", ge=0)
    betas: tuple[float, ...] = setting((0.1, 4.0), "the beta-VAE sweep (beta = 1 is the vae)", items_gt=0)
    path: tuple[tuple[float, float], ...] = setting(((0.1, 1.0), (0.01, 1.0)), "fixed-variance VAEs (posterior_scale, "
                                                    "beta) on the way to the AE: s -> 0 (and beta -> 0 too)")
    rae: Selected = slot("objective", "rae", "the regularised AE's objective", code_penalty=1.0, decoder_l2=1e-3)
    # Walkback matters: with at most 3 steps (continue 0.5) the chains collapse onto trousers within 100 steps
    # (FD 219 after 8 epochs); with 5 steps (continue 0.8) they move between classes (FD 67).  Each walkback step
    # costs one more forward and backward pass.
    dae: Selected = slot("objective", "dae", "the denoising AE's objective", corruption="salt_and_pepper",
                         noise_level=0.3, walkback_steps=4, walkback_continue=0.8)
    chain: Selected = slot("recipe", "chain", "the DAE's chain that samples it", steps=50)
    made: Selected = slot("model_kind", "autoregressive", "MADE", hidden=(500,))
    # lambda 100 gave the WAE the highest log p(x) and the smallest Frechet distance between its codes and N(0, I) of
    # 10, 100, 1000 (4 epochs, 500 test images); the AAE's weight 10 moved its codes further toward N(0, I) than 1.
    wae_enabled: bool = setting(True, "train the WAE")
    wae: Selected = slot("objective", "wae", "the WAE's objective", mmd_weight=100.0)
    aae_enabled: bool = setting(True, "train the AAE")
    aae: Selected = slot("objective", "aae", "the AAE's objective", adversarial_weight=10.0)
    vq: VQStudySettings = dataclasses.field(default_factory=VQStudySettings)
    discrete: DiscreteStudySettings = dataclasses.field(default_factory=DiscreteStudySettings)
    latent_map: bool = setting(True, "train 2-D variants of the VAE and the AE for the latent map")
    latent_map_epochs: int = setting(3, "epochs of the 2-D variants", gt=0)
    expost: ExpostStudySettings = dataclasses.field(default_factory=ExpostStudySettings)
    eval: StudyEvalSettings = dataclasses.field(default_factory=StudyEvalSettings)
    classifier_epochs: int = setting(5, "epochs of the feature classifier (vaegen.studies.metrics.CLASSIFIER_RECIPE)",
                                     gt=0)

    def validate(self, key):
        for pair in self.path:
            if len(pair) != 2 or pair[0] <= 0 or pair[1] <= 0:
                raise ConfigError(f"{key('path')}: entries are (posterior_scale > 0, beta > 0), got {pair}")


def _recipe_section(name: str, **settings: Any) -> Selected:
    return RECIPES.select(name, **settings)


def study_settings(preset: str = "quick") -> CompareSettings:
    """The settings of a study preset.

    ``quick``: Fashion-MNIST, the ``vae_mlp_fmnist`` networks, 4 epochs and 500 test images -- about 10 minutes
    on a 2-core CPU.  ``standard``: the same models early-stopped (at most 20 epochs), 3 training seeds, log p(x)
    with k = 1000 on 2,000 test images and the bounds on all of them -- 91 minutes for the three seeds measured on
    a quiet 2-core CPU, about 3 hours on a busy one (docs/results/compare-standard-2026-12-07).
    ``full``: trained for long (at most 100 epochs, early-stopped), 3 seeds, many more samples, k = 1000 on the
    whole test set, a wider sweep -- for a GPU.  ``tiny``: scikit-learn's 8x8 digits, for tests.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown study preset {preset!r}; choose one of {', '.join(PRESETS)}")
    s = CompareSettings(preset=preset)
    r = dataclasses.replace
    if preset == "standard":
        # Converged as far as the 2-core CPU allows in a few hours: every model early-stopped on its validation
        # objective (at most 20 epochs), 3 training seeds, log p(x) with k = 1000 on 2,000 test images and the bounds on
        # the whole test set (docs/results/ records what it measured and how far each model was from converging).
        return r(s, seeds=3, epochs=20, patience=3, latent_map_epochs=10,
                 eval=r(s.eval, k=1000, max_test_examples=2000, max_bound_examples=0, coded_examples=1000))
    if preset == "full":
        return r(s, epochs=100, patience=10, seeds=3, betas=(0.1, 0.5, 2.0, 4.0),
                 path=((1.0, 1.0), (0.3, 1.0), (0.1, 1.0), (0.03, 1.0), (0.01, 1.0), (0.1, 0.1), (0.01, 0.01)),
                 dae=_changed(s.dae, walkback_steps=10), chain=_changed(s.chain, steps=1000),
                 made=_changed(s.made, hidden=(1000, 1000)), latent_map_epochs=50,
                 expost=r(s.expost, fit=r(s.expost.fit, max_codes=50000)),
                 eval=r(s.eval, k=1000, max_test_examples=0, max_bound_examples=0, num_samples=10000, num_codes=20000,
                        num_prior_samples=10000))
    if preset == "tiny":
        e = s.expost
        return r(s, base="tiny", epochs=2, betas=(), path=((0.1, 1.0),), dae=_changed(s.dae, walkback_steps=2),
                 chain=_changed(s.chain, steps=4), made=_changed(s.made, hidden=(32,)), latent_map_epochs=2,
                 expost=r(e, recipes=("gmm", "flow"), rae_recipes=("gmm",),   # one learned density keeps it short
                          fit=r(e.fit, max_codes=400, epochs=2, batch_size=50), gmm=_changed(e.gmm, components=3),
                          flow=_changed(e.flow, density=r(e.flow.settings.density, hidden=(16,), layers=2)),
                          two_stage=_changed(e.two_stage, density=r(e.two_stage.settings.density, hidden=(16,),
                                                                    is_samples=4)),
                          diffusion=_changed(e.diffusion, density=r(e.diffusion.settings.density, hidden=(16,),
                                                                    bound_samples=4, sample_steps=5))),
                 discrete=r(s.discrete, variables=2, categories=3),
                 vq=r(s.vq, kind=_changed(s.vq.kind, codebook_size=4, code_dim=2),
                      recipe=_changed(s.vq.recipe, max_codes=400, epochs=2, batch_size=50,
                                      density=r(s.vq.recipe.settings.density, hidden=(16,)))),
                 eval=r(s.eval, k=4, max_test_examples=40, max_bound_examples=40, num_samples=64, num_codes=300,
                        num_prior_samples=100, coded_examples=20),
                 classifier_epochs=1)
    return s


def _changed(selected: Selected, **settings: Any) -> Selected:
    """``selected`` with some of its settings changed (checked like any setting)."""
    return Selected(selected.kind, selected.name, dataclasses.replace(selected.settings, **settings))


def load_study(preset: str = "quick", settings: Iterable[str] = ()) -> CompareSettings:
    """A study preset with ``key=value`` settings applied (typed literals, a component chosen by name
    like a run's config; unknown keys and bad values: one line naming the key)."""
    config = ml_collections.ConfigDict(to_mapping(study_settings(preset)))
    config.lock()
    config_lib.apply_overrides(config, settings, spec_type=CompareSettings)
    return parse(CompareSettings, config.to_dict())


# --- variants (trained models) and rows (how each gets p(x)) ---------------------------------------

@dataclasses.dataclass(frozen=True)
class Variant:
    """One trained model: the base preset's run spec with typed component choices.

    Attributes:
      name, label, group: its workdir name, its label in tables, its group (vae | beta | path | ae | discrete |
        rae | matched | vq | dae | made | map).
      epochs: training epochs.
      posterior, prior, objective, kind: the component sections it replaces (None: the base's).
      beta: the KL weight of the base's objective (None: unchanged).
      latent_dim: the latent dimension (None: the base's).
      recipes: the ways of getting p(x) that give its rows.
    """

    name: str
    label: str
    group: str
    epochs: int
    posterior: Selected | None = None
    prior: Selected | None = None
    objective: Selected | None = None
    kind: Selected | None = None
    beta: float | None = None
    latent_dim: int | None = None
    recipes: tuple[Selected | str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: a variant and the recipe that makes it a model with p(x) (the ``data``
    row, held-out images, has neither); ``best``: a placeholder resolved when measured
    (:func:`resolve_best`)."""

    name: str
    label: str
    variant: str | None
    recipe: Selected | None
    sampled_from: str
    best: bool = False

    @property
    def recipe_object(self) -> Recipe | None:
        return None if self.recipe is None else self.recipe.build()


def _g(v: float) -> str:
    return f"{v:g}"


def expost_recipe(study: CompareSettings, name: str) -> Selected:
    """The recipe ``name`` with this study's settings: its section in ``expost`` (its defaults if it has
    none), the study's fit settings and seed wherever it has those settings."""
    field_names = {f.name for f in fields(ExpostStudySettings)}
    selected = getattr(study.expost, name) if name in field_names else RECIPES.select(name)
    return _with_study_settings(study, selected)


def _with_study_settings(study: CompareSettings, selected: Selected, fit: bool = True) -> Selected:
    own = {f.name for f in fields(type(selected.settings))}
    common = {k: v for k, v in to_mapping(study.expost.fit).items() if k in own} if fit else {}
    if "seed" in own:
        common["seed"] = int(study.seed)
    return _changed(selected, **common) if common else selected


def variants(study: CompareSettings) -> list[Variant]:
    e = int(study.epochs)
    own, none, n01 = RECIPES.select("own"), RECIPES.select("none"), RECIPES.select("standard_normal")
    point_mass, no_prior = POSTERIORS.select("point_mass"), PRIORS.select("none")
    densities = tuple(expost_recipe(study, n) for n in study.expost.recipes)
    rae_densities = tuple(BEST if n == BEST else expost_recipe(study, n) for n in study.expost.rae_recipes)
    out = [Variant("vae", "VAE", "vae", e, recipes=(own, *densities))]
    for b in study.betas:
        out.append(Variant(f"beta_{_g(b)}", f"β-VAE β={_g(b)}", "beta", e, beta=float(b), recipes=(own,)))
    for s, b in study.path:
        out.append(Variant(f"fixed_scale_{_g(s)}_beta_{_g(b)}", f"VAE σ={_g(s)} fixed, β={_g(b)}", "path", e,
                           posterior=POSTERIORS.select("fixed_scale_gaussian", scale=float(s)),
                           beta=float(b), recipes=(own,)))
    out.append(Variant("ae", "AE", "ae", e, posterior=point_mass, prior=no_prior, objective=OBJECTIVES.select("ae"),
                       recipes=(none, n01, *densities)))
    out.append(Variant("rae", "RAE", "rae", e, posterior=point_mass, prior=no_prior, objective=study.rae,
                       recipes=(n01, *rae_densities)))
    if study.wae_enabled:
        out.append(Variant("wae", "WAE-MMD", "matched", e, posterior=point_mass, objective=study.wae, recipes=(own,)))
    if study.aae_enabled:
        out.append(Variant("aae", "AAE", "matched", e, posterior=point_mass, objective=study.aae, recipes=(own,)))
    if study.vq.enabled:
        out.append(Variant("vq", "VQ-VAE", "vq", e, posterior=point_mass, prior=no_prior, objective=study.vq.objective,
                           kind=study.vq.kind, recipes=(_with_study_settings(study, study.vq.recipe, fit=False),)))
    if study.discrete.enabled:
        d = study.discrete
        out.append(Variant("dvae", "discrete VAE", "discrete", e, posterior=POSTERIORS.select("categorical", categories=d.categories),
                           prior=PRIORS.select("categorical", categories=d.categories), objective=d.objective,
                           latent_dim=int(d.variables) * int(d.categories), recipes=(own,)))
    out.append(Variant("dae", "DAE (walkback)", "dae", e, posterior=point_mass, prior=no_prior, objective=study.dae,
                       recipes=(study.chain,)))
    out.append(Variant("made", "MADE (no z)", "made", e, objective=OBJECTIVES.select("exact"), kind=study.made,
                       recipes=(RECIPES.select("exact"),)))
    if study.latent_map:
        m = int(study.latent_map_epochs)
        out.append(Variant("vae_2d", "VAE, 2-D z", "map", m, latent_dim=2))
        out.append(Variant("ae_2d", "AE, 2-D z", "map", m, posterior=point_mass, prior=no_prior,
                           objective=OBJECTIVES.select("ae"), latent_dim=2))
    return out


def base_spec(study: CompareSettings, overrides: Sequence[str] = ()) -> RunSpec:
    """The base preset with the user's overrides (``key=value``, applied to every model) and the study's seed."""
    return to_spec(config_lib.load_config(study.base, [*overrides, f"seed={int(study.seed)}"]))


def seeds(study: CompareSettings) -> list[int]:
    """The training seeds of every model: ``seed, seed + 1, ..., seed + seeds - 1``."""
    return [int(study.seed) + i for i in range(int(study.seeds))]


def run_name(study: CompareSettings, variant: str, seed: int) -> str:
    """The workdir of a variant's run with training seed ``seed``: ``<variant>`` for the first seed,
    ``<variant>.seed<s>`` for the others."""
    return config_lib.seeded_run_name(variant, seed, int(study.seed))


def model_spec(study: CompareSettings, variant: Variant, overrides: Sequence[str] = (), seed: int | None = None
               ) -> RunSpec:
    """The full typed run spec of a variant: the base preset, the user's overrides, the variant's choices,
    the study's training length and early stopping (checkpoints every 5 epochs and at the end:
    resumable, not slow), trained with ``seed`` (default the study's)."""
    spec = base_spec(study, overrides)
    if seed is not None:
        spec = dataclasses.replace(spec, seed=int(seed))
    r = dataclasses.replace
    every = max(1, min(5, variant.epochs))
    objective = variant.objective if variant.objective is not None else spec.objective
    if variant.beta is not None:
        objective = _changed(objective, beta=variant.beta)
    model = r(spec.model, **{k: v for k, v in (("kind", variant.kind), ("prior", variant.prior),
                                               ("latent_dim", variant.latent_dim)) if v is not None})
    inference = r(spec.inference, posterior=variant.posterior) if variant.posterior is not None else spec.inference
    train = r(spec.train, num_epochs=int(variant.epochs), progress=False, checkpoint_every_epochs=every)
    if study.patience:
        train = r(train, early_stopping_patience=int(study.patience), eval_every_epochs=1)
    return r(spec, model=model, inference=inference, objective=objective, train=train)


def rows(study: CompareSettings) -> list[Row]:
    """The table's rows: ``data``, then every (variant, recipe) pair in the variants' order."""
    out = [Row("data", "data (held-out images)", None, None, "validation split")]
    for v in variants(study):
        spec = model_spec(study, v)
        for selected in v.recipes:
            if selected == BEST:
                out.append(Row(f"{v.name}+{BEST}", f"{v.label} + the AE's best ex-post density", v.name, None,
                               "the AE's best density on codes", best=True))
                continue
            recipe = selected.build()
            tag = recipe.trait("tag")
            out.append(Row(f"{v.name}+{tag}" if tag else v.name, recipe.label(v.label), v.name, selected,
                           recipe.samples_from(spec)))
    return out


def resolve_best(row: Row, measured: Sequence[Row], results: dict[str, Any]) -> Row | None:
    """The row ``<variant>+best`` as the recipe it stands for: the fitted recipe whose AE row has the
    highest mean test log p(x) among the rows measured so far (a log p(x) the recipe declares not
    rankable -- the diffusion's, a bound up to a Monte Carlo bias -- is left out).  None when that
    recipe already has a row of this variant or no AE density row was measured."""
    candidates = [r for r in measured if r is not None and r.variant == "ae" and r.recipe is not None
                  and r.recipe_object.fitted and r.recipe_object.log_px_kind.rankable
                  and "log_px" in results.get(r.name, {})]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: results[r.name]["log_px"]["mean"])
    if any(r is not None and r.variant == row.variant and r.recipe is not None and r.recipe.name == best.recipe.name
           for r in measured):
        return None  # the variant has a row of that recipe in the table already
    recipe = best.recipe.build()
    model_label = row.label.split(" + ")[0]
    return Row(f"{row.variant}+{recipe.trait('tag')}", recipe.label(model_label), row.variant, best.recipe,
               f"{recipe.trait('samples_from')} (the AE's best)")


# --- context shared by the rows ------------------------------------------------------------------

@dataclasses.dataclass
class StudyContext:
    """What every row's measurement shares: the study, the trained runs, the test images, the feature
    space, and caches of codes and fits."""

    study: CompareSettings
    workdir: pathlib.Path
    splits: datasets.Splits
    base_spec: RunSpec
    runs: dict[str, Run]
    space: metrics_lib.FeatureSpace
    x_test: jax.Array          # [M, *event]: test images for log p(x) and reconstructions
    reference: np.ndarray      # [S, *event]: the reference images of the sample metrics (test split)
    reference_features: np.ndarray
    key: jax.Array
    x_bounds: jax.Array | None = None   # [M', *event], M' >= M: test images for the ELBO and the reconstruction
    seed: int = 0                       # the training seed of ``runs``
    codes: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    fits: dict[tuple[str, str], Fit] = dataclasses.field(default_factory=dict)

    def stem(self, row: "Row") -> str:
        """The name of a row's files in ``rows/`` for this context's seed."""
        return run_name(self.study, row.name, self.seed)

    @property
    def bounds_images(self) -> jax.Array:
        return self.x_test if self.x_bounds is None else self.x_bounds


def eval_split(spec: RunSpec, split: str, n: int) -> jax.Array:
    x_u8 = getattr(trainer_lib.load_data(spec), split)
    if n:
        x_u8 = x_u8[:n]
    return jnp.asarray(splits_lib.model_view(spec.data, x_u8, split))


def codes_of(ctx: StudyContext, name: str) -> dict[str, np.ndarray]:
    """Training codes (aggregate-posterior draws) and held-out codes of a latent variant."""
    if name not in ctx.codes:
        run = ctx.runs[name]
        ev = ctx.study.eval
        n_train = max(int(ev.num_codes), int(ctx.study.expost.fit.max_codes))
        x_train = codes_lib.training_images(run, max_examples=n_train, seed=int(ctx.study.seed))
        key = jax.random.fold_in(ctx.key, 11)
        train = codes_lib.encode_codes(run.model, run.variables, x_train, key)
        held = codes_lib.encode_codes(run.model, run.variables, eval_split(run.spec, "test", int(ev.num_prior_samples)),
                                      jax.random.fold_in(key, 1))
        ctx.codes[name] = {"train": train, "test": held}
    return ctx.codes[name]


def _uses_codes(recipe: Recipe) -> bool:
    """Whether the recipe's p(z) is over continuous codes (the study's codes feed its fit and proposal)."""
    return bool({"continuous_codes", "prior"} & set(recipe.trait("needs")))


def fit_of(ctx: StudyContext, variant: str, selected: Selected) -> Fit:
    """The recipe's fit to the variant (fitted once, in the variant's workdir; reused when fitted before
    with the same settings, a fit with other settings kept aside): densities over continuous codes are
    fitted to the study's codes (the first ``expost.fit.max_codes``)."""
    key = (variant, f"{selected.name}:{hash(selected.settings)}")
    if key not in ctx.fits:
        recipe, run = selected.build(), ctx.runs[variant]
        codes = codes_of(ctx, variant)["train"] if recipe.fitted and _uses_codes(recipe) else None
        ctx.fits[key] = recipe.fit(run, codes=codes, refit=True) if recipe.fitted else Fit(recipe.name)
    return ctx.fits[key]


def generative_run(ctx: StudyContext, row: Row) -> Run:
    """The row's variant made a model with p(x) by the row's recipe."""
    recipe, run = row.recipe.build(), ctx.runs[row.variant]
    scale = codes_of(ctx, row.variant)["train"].std(0) if run.is_autoencoder and _uses_codes(recipe) else None
    return recipe.attach(run, fit_of(ctx, row.variant, row.recipe), code_scale=scale)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _prior_draws(model, n: int, variables, key):
    """z ~ p(z): ``[n, D]``."""
    return model.apply(variables, method=lambda m: m.p_z().sample(seed=key, sample_shape=(n,)))


@dataclasses.dataclass(frozen=True)
class _Reconstruction:
    """log p(x | z = E_q[z|x]) of one example."""

    model: Any

    def __call__(self, variables, x, key):
        del key
        return self.model.apply(variables, method=lambda m: m.log_likelihood(x, m.q_z_given_x(x).mean()))


def reconstruction_terms(run: Run, x: jax.Array) -> np.ndarray:
    """log p(x | z = E_q[z|x]) in nats for each row of ``x [M, *event]``: ``[M]``."""
    fn = jax.tree_util.Partial(_Reconstruction(run.model), run.variables)
    return np.asarray(sharding_lib.map_examples(fn, jnp.asarray(x), jax.random.key(0), batch_size=min(500, x.shape[0])))


def _num_params(tree: Any) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(tree)))


def num_params(run: Run) -> dict[str, int]:
    """Parameters of the generative model (everything but q(z|x)) and in all."""
    generative = {k: v for k, v in run.variables["params"].items() if k != "posterior"}
    return {"generative": _num_params(generative), "total": _num_params(run.variables)}


def _continuous_prior(gen: Run) -> bool:
    """Whether ``gen`` samples z from a p(z) over continuous codes (the codes' neighbourhoods apply)."""
    return gen.has_prior and codes_kind(gen) == "continuous"


def row_record(row: Row) -> dict[str, Any]:
    """A row as JSON: its name, label, variant, recipe (name and settings) and what it samples from."""
    return {"name": row.name, "label": row.label, "variant": row.variant, "sampled_from": row.sampled_from,
            "recipe": None if row.recipe is None else row.recipe.to_mapping()}


def evaluate_row(ctx: StudyContext, row: Row) -> dict[str, Any]:
    """Every metric of one row (see the module docstring); JSON-able."""
    ev = ctx.study.eval
    key = jax.random.fold_in(ctx.key, int(hashlib.sha256(row.name.encode()).hexdigest()[:7], 16))
    out: dict[str, Any] = {"row": row_record(row)}
    t0 = time.perf_counter()
    dims = int(np.prod(ctx.x_test.shape[1:]))
    if row.recipe is None:       # the data row
        out["log_px_undefined"] = "the data are not a model"
        t = time.perf_counter()
        x = np.asarray(eval_split(ctx.base_spec, "validation", int(ev.num_samples)))
        out["seconds_sampling"] = time.perf_counter() - t
        out["samples"] = metrics_lib.sample_quality(ctx.space, x, ctx.reference_features, k=int(ev.nn_k))
        files_lib.write_npz(ctx.workdir / "rows" / f"{ctx.stem(row)}.samples.npz",
                            {"display": x[:64].astype(np.float16), "x": x[:64].astype(np.float16)}, kind="table",
                            compressed=True)
        out["seconds"] = time.perf_counter() - t0
        return out
    run = ctx.runs[row.variant]
    recipe = row.recipe.build()
    out["point_mass"] = run.is_autoencoder
    gen = generative_run(ctx, row)
    kind = recipe.log_px_kind
    out["log_px_kind"] = kind.value

    # Test log p(x) (and the ELBO), as the recipe measures it, with the same random numbers for every row
    # (common random numbers: the paired differences between rows are then sharper).
    draws = jax.random.fold_in(ctx.key, COMMON_DRAWS)
    values: dict[str, np.ndarray] = {}
    est: Estimate | None = None
    if kind in (LogPx.UNDEFINED, LogPx.INTRACTABLE):
        out["log_px_undefined"] = recipe.trait("log_px_meaning")
        if kind is LogPx.UNDEFINED:
            out["elbo_undefined"] = evaluate_lib.UNDEFINED_FOR_AE["elbo"]
    else:
        same_images = ctx.bounds_images.shape[0] == ctx.x_test.shape[0]
        est = recipe.log_px(gen, ctx.x_test, jax.random.fold_in(draws, 3), k=int(ev.k),
                            with_elbo=bool(recipe.trait("reports_elbo")) and same_images)
        meanings = est.extra.get("meanings", {})
        values["log_px"] = np.asarray(est.values["log_px"], np.float64)
        out["log_px"] = dict(evaluate_lib.summarize(values["log_px"], dims), estimator=est.estimator,
                             meaning=meanings.get("log_px", recipe.trait("log_px_meaning")))
        bounds = est
        if not same_images:     # the bounds on more images (one draw each where they are estimates)
            bounds = recipe.log_px(gen, ctx.bounds_images, jax.random.fold_in(draws, 4), k=1,
                                   with_elbo=bool(recipe.trait("reports_elbo")))
        for name in ("elbo", "reconstruction"):
            if name in bounds.values:
                values[name] = np.asarray(bounds.values[name], np.float64)
                out[name] = dict(evaluate_lib.summarize(values[name], dims),
                                 **({"meaning": meanings[name]} if name in meanings else {}))
        for name in ("kl", "log_p_code"):
            if name in bounds.values:
                out[name] = evaluate_lib.summarize(bounds.values[name], None)
        if "codebook_usage" in est.extra:
            out["codebook_usage"] = est.extra["codebook_usage"]
    out["seconds_log_px"] = time.perf_counter() - t0

    # Reconstruction log p(x | z = E_q[z|x]) of the trained model.
    if run.has_latents and "reconstruction" not in out:
        values["reconstruction"] = reconstruction_terms(run, ctx.bounds_images).astype(np.float64)
        out["reconstruction"] = evaluate_lib.summarize(values["reconstruction"], dims)
    if values:    # per-image values, for the paired differences between rows
        files_lib.write_npz(ctx.workdir / "rows" / f"{ctx.stem(row)}.values.npz", values, kind="table")

    # Samples and their quality in the classifier's feature space.
    if kind is not LogPx.UNDEFINED:
        t = time.perf_counter()
        x, display = recipe.sample(gen, jax.random.fold_in(key, 1), int(ev.num_samples))
        out["seconds_sampling"] = time.perf_counter() - t
        out["samples"] = metrics_lib.sample_quality(ctx.space, x, ctx.reference_features, k=int(ev.nn_k))
        files_lib.write_npz(ctx.workdir / "rows" / f"{ctx.stem(row)}.samples.npz",
                            {"display": display[:64].astype(np.float16), "x": x[:64].astype(np.uint8)}, kind="table",
                            compressed=True)

    # The aggregate posterior against the prior the samples come from.
    if _continuous_prior(gen):
        codes = codes_of(ctx, row.variant)
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
    # The model as a lossless compressor: the measured size of a file of test images, beside its bound.
    if int(ev.coded_examples):
        x_code = ctx.bounds_images[: int(ev.coded_examples)]
        t = time.perf_counter()
        try:
            out["coded"] = compression_lib.sizes(compression_lib.compress(gen, np.asarray(x_code)))
            out["coded"]["seconds"] = time.perf_counter() - t
        except (CodingError, NoPriorError) as e:
            out["coded_undefined"] = " ".join(str(e).split())
    if recipe.fitted:
        fit = fit_of(ctx, row.variant, row.recipe)
        out["fit"] = {k: v for k, v in fit.info.items() if k != "train_metrics"}
        out["fit_seconds"] = recipe.fit_seconds(fit)
    out["num_params"] = num_params(run)
    out["train_seconds"] = train_seconds(run.workdir)
    out["seconds"] = time.perf_counter() - t0
    return out


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
