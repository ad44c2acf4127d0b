"""vaegen: deep latent-variable models in JAX.

A model is its generative process, p(x, z) = p(z) p(x | z), written with distrax
distributions; amortized inference q(z | x) sits beside it; the autoencoder is the same code
with a point-mass posterior and no prior.

Table of contents::

    vaegen.LatentVariableModel      p(z), p(x|z) and q(z|x) side by side       (model.py)
    vaegen.priors / likelihoods / posteriors / networks                        building blocks
    vaegen.ELBO, IWAE, Autoencoder  per-example objectives, terms in nats      (objectives.py)
    vaegen.train_and_evaluate       the fused, jitted trainer                  (train.py)
    vaegen.faults / inputs / sharding  non-finite steps, signals, data checks, multi-host
    vaegen.load                     a trained run from its workdir             (run.py)
    vaegen.evaluate                 bounds and log p(x) on held-out data       (evaluation.py)
    vaegen.estimators               IS, AIS with HMC, BDMC for any log p(x, z)  (estimators.py)
    vaegen.diagnostics              KL per unit, active units, rate, I_q(x; z)  (diagnostics.py)
    vaegen.load_config              presets, overrides, validation             (config.py)
    vaegen.fit_local                q*(z|x) per example by SVI, sharded, vmapped  (inference.py)
    vaegen.SemiAmortizedELBO        K SVI steps inside the training step       (inference.py)
    vaegen.compute_gaps             approximation and amortization gaps        (gaps.py)
    vaegen.expost                   an AE made generative: a mixture fitted to its codes as p(z)
    vaegen.rae, dae, autoregressive the RAE, the denoising AE and its chain, MADE (no z)
    vaegen.metrics                  FD/precision/recall in a classifier's features, prior holes
    vaegen.compare                  the VAE-vs-AE study and its report (`vaegen compare`)
"""

from vaegen.estimators import diagnostics as diagnostics
from vaegen.estimators import importance as estimators
from vaegen.config.loading import ConfigError, load_config
from vaegen.evaluation.evaluate import evaluate
from vaegen.model.latent import LatentVariableModel, NoPriorError, build_model
from vaegen.objectives.bounds import ELBO, IWAE, Autoencoder, UndefinedObjectiveError
from vaegen.evaluation.run import Run, load
from vaegen.train.trainer import train_and_evaluate
from vaegen.train.faults import NonFiniteError, TrainingInterrupted
from vaegen.data.checks import DataError

from vaegen.studies.gaps import compute_gaps
from vaegen.inference.svi import SemiAmortizedELBO, SVISettings, fit_local

__version__ = "0.1.0"

__all__ = [
    "Autoencoder",
    "ConfigError",
    "DataError",
    "ELBO",
    "IWAE",
    "LatentVariableModel",
    "NoPriorError",
    "NonFiniteError",
    "Run",
    "TrainingInterrupted",
    "UndefinedObjectiveError",
    "build_model",
    "diagnostics",
    "estimators",
    "evaluate",
    "load",
    "load_config",
    "train_and_evaluate",
]
__all__ += ["SVISettings", "SemiAmortizedELBO", "compute_gaps", "fit_local"]
