"""The adversarial autoencoder (Makhzani et al. 2016) matching ``vae_mlp_fmnist``: identical
encoder trunk, decoder and Bernoulli likelihood, same data protocol and optimiser; the posterior
is a point mass, p(z) = N(0, I), and a discriminator D(z) (its own parameters and Adam, trained
in the same fused steps) tells draws of p(z) from codes while the encoder learns to fool it
(``vaegen.objectives.matching``).

Command::

    vaegen train --config aae_mlp_fmnist --workdir runs/aae

Runtime: the AE's plus the discriminator's forward and backward passes on 2B codes per step.
Expected: ``train/discriminator/accuracy`` falls towards 0.5 as the codes fill N(0, I); sampling
and log p(x) as for the WAE.
"""

from vaegen.config.loading import component
from vaegen.config.presets import vae_mlp_fmnist


def get_config(arg: str | None = None):
    c = vae_mlp_fmnist.get_config()
    c.inference.posterior = component("posterior", "point_mass")
    c.objective = component("objective", "aae")
    return c
