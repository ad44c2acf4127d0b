"""Fashion-MNIST, ConvHVAE, Gaussian prior: Exemplar VAE paper (Norouzi et al. 2020), density-estimation table,
test log p(x) = -225.38 ± 0.08 nats (importance sampling, k = 5000), VampPrior protocol
(``data.protocol=vampprior_fmnist``).  Settings: ``vaegen.studies.reproduce.vampprior``.

Command::

    python experiments/reproduce/run.py --rows fmnist_convhvae_standard --out runs/reproduce
    # or: vaegen train --config experiments/reproduce/configs/fmnist_convhvae_standard.py --workdir runs/reproduce/fmnist_convhvae_standard
    #     vaegen evaluate --workdir runs/reproduce/fmnist_convhvae_standard --k 5000

Runtime: early stopping decides; gated convolutions at 28x28 make it a GPU config.
Published: -225.38 ± 0.08 nats.
"""

from vaegen.studies import reproduce as reproduce

ROW = reproduce.ROWS["fmnist_convhvae_standard"]


def get_config(arg=None):
    del arg
    return ROW.config()
