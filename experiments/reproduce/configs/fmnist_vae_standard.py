"""Fashion-MNIST, VAE, Gaussian prior: Exemplar VAE paper (Norouzi et al. 2020), density-estimation table,
test log p(x) = -228.70 ± 0.15 nats (importance sampling, k = 5000), VampPrior protocol
(``data.protocol=vampprior_fmnist``).  Settings: ``vaegen.reproduce.vampprior``.

Command::

    python experiments/reproduce/run.py --rows fmnist_vae_standard --out runs/reproduce
    # or: vaegen train --config experiments/reproduce/configs/fmnist_vae_standard.py --workdir runs/reproduce/fmnist_vae_standard
    #     vaegen evaluate --workdir runs/reproduce/fmnist_vae_standard --k 5000

Runtime: early stopping decides (typically several hundred epochs); about 10 s per epoch on a
2-core CPU, a fraction of a second per epoch on one GPU.
Published: -228.70 ± 0.15 nats.
"""

from vaegen import reproduce

ROW = reproduce.ROWS["fmnist_vae_standard"]


def get_config(arg=None):
    del arg
    return ROW.config()
