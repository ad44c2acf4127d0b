"""A discrete-latent VAE matching ``vae_mlp_fmnist``: identical encoder trunk (784-200-200 tanh),
decoder trunk (200-200 tanh) and Bernoulli likelihood, same data protocol and optimiser; z is
M = 30 categorical variables of K = 10 categories, each one-hot, read by the decoder as one vector
[300] (the latent space of Jang et al. 2017's categorical VAE).  q(z | x) and p(z) (uniform) are
factorized categoricals, trained jointly on the ELBO with the KL in closed form; the gradient of
E_q[log p(x | z)] is the Gumbel-softmax relaxation (Jang et al. 2017) at temperature
max(0.5, exp(-1e-4 t)) at step t (their schedule).

Against ``vq_mlp_fmnist`` (10 positions, each one of 512 codes): the same kind of latent -- a
tuple of categorical choices -- with a comparable capacity, M log K = 30 ln 10 = 69 nats here
against 10 ln 512 = 62 nats there, but trained as a VAE (a categorical q and p, the KL in the
objective) instead of as a quantizing autoencoder whose prior is fitted afterwards.

Command::

    vaegen train --config dvae_mlp_fmnist --workdir runs/dvae
    vaegen evaluate --workdir runs/dvae --k 100 --max-examples 500

Other gradient estimators: ``--config.objective.estimator=straight_through`` (or ``reinforce``
with ``--config.objective.num_samples=2``), or ``--config.objective.name=vimco``.

Runtime and expected results: see docs/discrete.md (measured on the 2-core x86-64 development CPU).
"""

from vaegen.config.loading import component
from vaegen.config.presets import vae_mlp_fmnist

M, K = 30, 10  # categorical variables, categories of each


def get_config(arg: str | None = None):
    c = vae_mlp_fmnist.get_config()
    c.model.latent_dim = M * K
    c.model.prior = component("prior", "categorical", categories=K)
    c.inference.posterior = component("posterior", "categorical", categories=K)
    c.objective = component("objective", "discrete_elbo", estimator="gumbel_softmax", temperature=1.0,
                            temperature_min=0.5, anneal_rate=1e-4)
    return c
