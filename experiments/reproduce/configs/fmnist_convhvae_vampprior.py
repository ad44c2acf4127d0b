"""Fashion-MNIST, ConvHVAE, VampPrior: Exemplar VAE paper (Norouzi et al. 2020), density-estimation table,
test log p(x) = -224.67 ± 0.03 nats (importance sampling, k = 5000), VampPrior protocol
(``data.protocol=vampprior_fmnist``).  Settings: ``vaegen.studies.reproduce.vampprior``.

Command::

    python experiments/reproduce/run.py --rows fmnist_convhvae_vampprior --out runs/reproduce
    # or: vaegen train --config experiments/reproduce/configs/fmnist_convhvae_vampprior.py --workdir runs/reproduce/fmnist_convhvae_vampprior
    #     vaegen evaluate --workdir runs/reproduce/fmnist_convhvae_vampprior --k 5000

Runtime: early stopping decides; a GPU config (the 500 pseudo-inputs pass the convolutional
encoder every step).
Published: -224.67 ± 0.03 nats.
"""

from vaegen.studies import reproduce as reproduce

ROW = reproduce.ROWS["fmnist_convhvae_vampprior"]


def get_config(arg=None):
    del arg
    return ROW.config()
