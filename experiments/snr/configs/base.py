"""The base model of the gradient-estimator study: the MLP VAE of ``vae_mlp_fmnist`` (tanh,
Bernoulli likelihood, N(0, I) prior, diagonal Gaussian q(z|x), dynamic binarization) with the
checkpoint and evaluation settings the study needs.  Every cell of ``quick.py`` and ``full.py``
is this config plus a few overrides.

Command (one model alone)::

    vaegen train --config experiments/snr/configs/base.py --workdir runs/snr/base
"""

from vaegen.config.presets import vae_mlp_fmnist


def get_config(arg: str | None = None):
    del arg
    c = vae_mlp_fmnist.get_config()
    c.train.progress = False
    c.train.keep_checkpoints = 1
    c.eval.estimators = "elbo"
    return c
