"""MNIST, IWAE, k = 5: Burda et al. 2016, Table 1, test NLL = 85.54 nats (importance sampling,
k = 5000; log p(x) = -85.54), dynamically binarized MNIST (``data.protocol=iwae_mnist``).
Settings: ``vaegen.studies.reproduce.iwae``.  MNIST needs a TFDS download (not available offline).

Command::

    python experiments/reproduce/run.py --rows mnist_iwae_k5 --out runs/reproduce

Runtime: 3,280 epochs of 2,980 steps (batch 20), 5 samples per example: hours on one GPU, not a CPU config.
Published: log p(x) = -85.54 nats.
"""

from vaegen.studies import reproduce as reproduce

ROW = reproduce.ROWS["mnist_iwae_k5"]


def get_config(arg=None):
    del arg
    return ROW.config()
