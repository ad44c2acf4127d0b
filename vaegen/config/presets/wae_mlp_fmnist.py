"""The Wasserstein autoencoder (WAE-MMD, Tolstikhin et al. 2018) matching ``vae_mlp_fmnist``:
identical encoder trunk, decoder and Bernoulli likelihood, same data protocol and optimiser; the
posterior is a point mass q(z|x) = delta(z - f(x)), p(z) = N(0, I), and the objective is
log p(x | z = f(x)) - lambda MMD^2(codes, p(z)) with the inverse multiquadratic kernels of the
paper (``vaegen.objectives.matching``).

Command::

    vaegen train --config wae_mlp_fmnist --workdir runs/wae

Runtime: as the AE plus the batch's kernel matrices (a few percent on a 2-core CPU).
Expected: a reconstruction close to the AE's, and codes whose aggregate distribution is near
N(0, I), so that ``vaegen sample`` draws from p(z) and ``vaegen evaluate`` estimates log p(x)
(importance sampling with a proposal around the code, as for an AE with N(0, I) attached).
"""

from vaegen.config.loading import component
from vaegen.config.presets import vae_mlp_fmnist


def get_config(arg: str | None = None):
    c = vae_mlp_fmnist.get_config()
    c.inference.posterior = component("posterior", "point_mass")
    c.objective = component("objective", "wae")
    return c
