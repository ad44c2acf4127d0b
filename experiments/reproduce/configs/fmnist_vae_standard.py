"""Fashion-MNIST, VAE, Gaussian prior: Exemplar VAE paper (Norouzi et al. 2020), density-estimation table,
test log p(x) = -228.70 ± 0.15 nats (importance sampling, k = 5000), VampPrior protocol
(``data.protocol=vampprior_fmnist``).  Settings: ``vaegen.studies.reproduce.vampprior``.

Command::

    python experiments/reproduce/run.py --rows fmnist_vae_standard --out runs/reproduce
    # or: vaegen train --config experiments/reproduce/configs/fmnist_vae_standard.py --workdir runs/reproduce/fmnist_vae_standard
    #     vaegen evaluate --workdir runs/reproduce/fmnist_vae_standard --k 5000

Runtime: early stopping decides: measured on a 2-core CPU, 622 epochs (best 572) at about 4 s
each, 78 min, then 6.5 min for IS with k = 5000 over the test set; log p(x) = -228.77 ± 0.76
(docs/reproduction.md).
Published: -228.70 ± 0.15 nats.
"""

from vaegen.studies import reproduce as reproduce

ROW = reproduce.ROWS["fmnist_vae_standard"]


def get_config(arg=None):
    del arg
    return ROW.config()
