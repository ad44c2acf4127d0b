"""vaegen: deep latent-variable models in JAX.

A model is its generative process, p(x, z) = p(z) p(x | z), written with distrax
distributions; amortized inference q(z | x) sits beside it; the autoencoder is the same code
with a point-mass posterior and no prior.

The package in layers, each importing only the ones above it in this list::

    vaegen.errors                   every user-facing error
    vaegen.files                    the one atomic writer of files (with the fault hook) and readers that fail on one line
    vaegen.sharding, .activations   meshes and the one per-example map; the nonlinearities by name
    vaegen.registry                 components by name (priors, likelihoods, posteriors, networks,
                                    objectives, model kinds, estimators), their traits, typed settings
    vaegen.data                     datasets, splits, binarization
    vaegen.spec                     the typed RunSpec and the optim, train, eval and gaps sections
    vaegen.blocks                   networks, priors p(z), likelihoods p(x|z), posteriors q(z|x)
    vaegen.model                    LatentVariableModel and the model kinds (one z, two layers, MADE, VQ-VAE,
                                    a categorical MADE over codes)
    vaegen.objectives               ELBO, IWAE (reparam, STL, DReG gradients), MIWAE, CIWAE, PIWAE, the autoencoders'
                                    objectives, exact log-likelihood; WAE, AAE, VQ; a discrete z's estimators
    vaegen.estimators               importance sampling, AIS, BDMC, diagnostics, the gradient SNR
    vaegen.train                    the fused trainer, optimiser, random streams, workdir, checkpoints,
                                    TensorBoard, the latent diagnostics at each validation
    vaegen.coding                   lossless coding with p(x): bits back with ANS, quantized codes,
                                    a VQ-VAE's codes, MADE's pixels (the registered coders)
    vaegen.inference                per-example q* by SVI, variational families, semi-amortized training
    vaegen.config                   presets, overrides, and the boundary to the typed run spec
    vaegen.runs                     train_and_evaluate(config), load(workdir, density=...), evaluate(run),
                                    compress(run, x) and decompress(run, data); the recipes: every way a
                                    trained run gets p(x) (own prior, N(0, I), densities fitted to its
                                    codes, a prior over discrete codes, ...)
    vaegen.studies                  compare and its report, gaps, ex-post fits, reproduction, demo
    vaegen.cli                      the `vaegen` command

Importing vaegen registers every built-in component; a module of your own registers more
(``vaegen.registry.PRIORS.register(...)``) and a config that imports it chooses them by name.
"""

from vaegen import errors, registry
from vaegen.blocks import densities, likelihoods, networks, posteriors, priors
from vaegen.blocks import discrete, quantizers
from vaegen.coding import coders
from vaegen.config.loading import load_config
from vaegen.config.schema import to_spec
from vaegen.errors import (ArgumentError, CheckpointError, CodingError, CompressedFileError, ConfigError,
                           DamagedFileError, DataError, InferenceError, NoLatentError, NoPriorError, NonFiniteError,
                           RecipeError, SupportError, TrainingInterrupted, UndefinedEstimateError,
                           UndefinedObjectiveError, WorkdirError)
from vaegen.estimators import ais, diagnostics, enumeration, importance, snr
from vaegen.spec.eval import EvalSettings
from vaegen.spec.run import RunSpec
from vaegen.inference import families, semi_amortized, svi
from vaegen.inference.semi_amortized import SemiAmortizedELBO
from vaegen.inference.svi import SVISettings, fit_local
from vaegen.model import autoregressive, latent, linear_gaussian, two_layer
from vaegen.model import densities as density_models
from vaegen.model import code_prior, vq as vq_vae
from vaegen.model.latent import LatentVariableModel, build_model
from vaegen.objectives import autoencoder, batch, bounds, denoising, density, exact, matching, multisample, surrogates
from vaegen.objectives import discrete as discrete_objectives
from vaegen.objectives import vq as vq_objective
from vaegen.objectives.autoencoder import Autoencoder
from vaegen.objectives.bounds import ELBO, IWAE
from vaegen.runs import recipes
from vaegen.runs import enumerated  # the estimator `exact` of `vaegen evaluate`
from vaegen.runs.compression import compress, decompress
from vaegen.runs.evaluate import evaluate
from vaegen.runs.loading import load  # a run, with a recipe (an ex-post density, ...) attached if asked for
from vaegen.runs.recipes import RECIPES, Recipe, recipe
from vaegen.runs.run import Run
from vaegen.runs.training import train_and_evaluate
from vaegen.studies import compare, demo, expost, gaps, reproduce
from vaegen.studies.gaps import compute_gaps

__version__ = "0.2.0"

__all__ = [
    "ArgumentError", "Autoencoder", "CheckpointError", "CodingError", "CompressedFileError", "ConfigError",
    "DamagedFileError", "DataError", "ELBO", "EvalSettings", "IWAE", "InferenceError", "LatentVariableModel",
    "NoLatentError", "NoPriorError", "NonFiniteError", "RECIPES", "Recipe", "RecipeError", "Run", "RunSpec",
    "SVISettings", "SemiAmortizedELBO", "SupportError", "TrainingInterrupted", "UndefinedEstimateError",
    "UndefinedObjectiveError", "WorkdirError", "build_model", "compress", "compute_gaps", "decompress", "evaluate",
    "fit_local", "load", "load_config", "recipe", "registry", "to_spec", "train_and_evaluate",
]
