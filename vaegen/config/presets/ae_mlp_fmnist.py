"""The autoencoder matching ``vae_mlp_fmnist``: identical encoder trunk, decoder and Bernoulli
likelihood, same data protocol and optimiser; the posterior is a point mass
q(z|x) = delta(z - f(x)), there is no prior, and the objective is log p(x | z = f(x)).

Command::

    vaegen train --config ae_mlp_fmnist --workdir runs/ae

Runtime: as the VAE (~2 s per epoch on a 2-core CPU).
Expected: a far better reconstruction log-likelihood than the VAE's (about -193 against -226
nats after 30 epochs: no KL to pay), and no
log p(x) and no samples: ``vaegen sample`` explains that there is no p(z).
"""

from vaegen.config.loading import component
from vaegen.config.presets import vae_mlp_fmnist


def get_config(arg: str | None = None):
    c = vae_mlp_fmnist.get_config()
    c.model.prior = component("prior", "none")
    c.inference.posterior = component("posterior", "point_mass")
    c.objective = component("objective", "ae")
    return c
