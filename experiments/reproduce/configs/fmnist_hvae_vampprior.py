"""Fashion-MNIST, HVAE (2 stochastic layers), VampPrior: Exemplar VAE paper (Norouzi et al. 2020), density-estimation table,
test log p(x) = -226.72 ± 0.08 nats (importance sampling, k = 5000), VampPrior protocol
(``data.protocol=vampprior_fmnist``).  Settings: ``vaegen.studies.reproduce.vampprior``.

Command::

    python experiments/reproduce/run.py --rows fmnist_hvae_vampprior --out runs/reproduce
    # or: vaegen train --config experiments/reproduce/configs/fmnist_hvae_vampprior.py --workdir runs/reproduce/fmnist_hvae_vampprior
    #     vaegen evaluate --workdir runs/reproduce/fmnist_hvae_vampprior --k 5000

Runtime: early stopping decides; about 2x the one-layer VampPrior's cost per epoch.
Published: -226.72 ± 0.08 nats.
"""

from vaegen.studies import reproduce as reproduce

ROW = reproduce.ROWS["fmnist_hvae_vampprior"]


def get_config(arg=None):
    del arg
    return ROW.config()
