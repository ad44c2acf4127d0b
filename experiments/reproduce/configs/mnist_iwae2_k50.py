"""MNIST, IWAE, 2 stochastic layers, k = 50: Burda et al. 2016, Table 1, test NLL = 82.90 nats (importance sampling,
k = 5000; log p(x) = -82.90), dynamically binarized MNIST (``data.protocol=iwae_mnist``).
Settings: ``vaegen.studies.reproduce.iwae``.  MNIST needs a TFDS download (not available offline).

Command::

    python experiments/reproduce/run.py --rows mnist_iwae2_k50 --out runs/reproduce

Runtime: 3,280 epochs of 2,980 steps (batch 20), 50 samples per example: hours on one GPU, not a CPU config.
Published: log p(x) = -82.90 nats.
"""

from vaegen.studies import reproduce as reproduce

ROW = reproduce.ROWS["mnist_iwae2_k50"]


def get_config(arg=None):
    del arg
    return ROW.config()
