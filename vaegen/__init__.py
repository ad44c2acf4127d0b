"""vaegen: deep latent-variable models in JAX.

A model is its generative process, p(x, z) = p(z) p(x | z), written with distrax
distributions; amortized inference q(z | x) sits beside it; the autoencoder is the same code
with a point-mass posterior and no prior.

The package in layers, each importing only the ones above it in this list::

    vaegen.errors                   every user-facing error
    vaegen.registry                 components by name (priors, likelihoods, posteriors, networks,
                                    objectives, model kinds, estimators) and typed settings
    vaegen.sharding, vaegen.data    meshes and the one per-example map; datasets, splits, binarization
    vaegen.blocks                   networks, priors p(z), likelihoods p(x|z), posteriors q(z|x)
    vaegen.model                    LatentVariableModel and the model kinds (one z, two layers, MADE, VQ-VAE,
                                    a categorical MADE over codes)
    vaegen.objectives               ELBO, IWAE (reparam, STL, DReG gradients), MIWAE, CIWAE, PIWAE, the autoencoders'
                                    objectives, exact log-likelihood; WAE, AAE, VQ
    vaegen.estimators               importance sampling, AIS, BDMC, diagnostics; the eval settings
    vaegen.train                    the fused trainer, optimiser, random streams, workdir, checkpoints,
                                    TensorBoard, the latent diagnostics at each validation
    vaegen.inference                per-example q* by SVI, variational families, semi-amortized training
    vaegen.config                   presets, overrides and the typed run spec (the boundary)
    vaegen.runs                     train_and_evaluate(config), load(workdir), evaluate(run)
    vaegen.studies                  compare and its report, gaps, ex-post densities, reproduction, demo
    vaegen.cli                      the `vaegen` command

Importing vaegen registers every built-in component; a module of your own registers more
(``vaegen.registry.PRIORS.register(...)``) and a config that imports it chooses them by name.
"""

from vaegen import errors, registry
from vaegen.blocks import densities, likelihoods, networks, posteriors, priors
from vaegen.blocks import quantizers
from vaegen.config.loading import load_config
from vaegen.config.schema import RunSpec, to_spec
from vaegen.errors import (CheckpointError, ConfigError, DataError, InferenceError, NoLatentError, NoPriorError,
                           NonFiniteError, SupportError, TrainingInterrupted, UndefinedEstimateError,
                           UndefinedObjectiveError, WorkdirError)
from vaegen.estimators import ais, diagnostics, importance, snr
from vaegen.estimators.settings import EvalSettings
from vaegen.inference import families, semi_amortized, svi
from vaegen.inference.semi_amortized import SemiAmortizedELBO
from vaegen.inference.svi import SVISettings, fit_local
from vaegen.model import autoregressive, latent, linear_gaussian, two_layer
from vaegen.model import densities as density_models
from vaegen.model import code_prior, vq as vq_vae
from vaegen.model.latent import LatentVariableModel, build_model
from vaegen.objectives import autoencoder, batch, bounds, denoising, density, exact, matching, multisample, surrogates
from vaegen.objectives import vq as vq_objective
from vaegen.objectives.autoencoder import Autoencoder
from vaegen.objectives.bounds import ELBO, IWAE
from vaegen.runs.evaluate import evaluate
from vaegen.runs.run import Run
from vaegen.runs.training import train_and_evaluate
from vaegen.studies import compare, demo, expost, gaps, reproduce
from vaegen.studies import vq
from vaegen.studies.expost import load  # a run, with an ex-post density attached if asked for
from vaegen.studies.gaps import compute_gaps

__version__ = "0.2.0"

__all__ = [
    "Autoencoder", "CheckpointError", "ConfigError", "DataError", "ELBO", "EvalSettings", "IWAE", "InferenceError",
    "LatentVariableModel", "NoLatentError", "NoPriorError", "NonFiniteError", "Run", "RunSpec", "SVISettings",
    "SemiAmortizedELBO", "SupportError", "TrainingInterrupted", "UndefinedEstimateError", "UndefinedObjectiveError",
    "WorkdirError", "build_model", "compute_gaps", "evaluate", "fit_local", "load", "load_config", "registry",
    "to_spec", "train_and_evaluate",
]
