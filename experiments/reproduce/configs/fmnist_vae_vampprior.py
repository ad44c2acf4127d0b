"""Fashion-MNIST, VAE, VampPrior (K = 500): Exemplar VAE paper (Norouzi et al. 2020), density-estimation table,
test log p(x) = -227.35 ± 0.05 nats (importance sampling, k = 5000), VampPrior protocol
(``data.protocol=vampprior_fmnist``).  Settings: ``vaegen.studies.reproduce.vampprior``.

Command::

    python experiments/reproduce/run.py --rows fmnist_vae_vampprior --out runs/reproduce
    # or: vaegen train --config experiments/reproduce/configs/fmnist_vae_vampprior.py --workdir runs/reproduce/fmnist_vae_vampprior
    #     vaegen evaluate --workdir runs/reproduce/fmnist_vae_vampprior --k 5000

Runtime: early stopping decides; every step also encodes the 500 pseudo-inputs: about 20 s per
epoch on a 2-core CPU (5x the VAE's), so hours there; a GPU config.
Published: -227.35 ± 0.05 nats.
"""

from vaegen.studies import reproduce as reproduce

ROW = reproduce.ROWS["fmnist_vae_vampprior"]


def get_config(arg=None):
    del arg
    return ROW.config()
