"""The base model of the amortization study: the 784-200-200-50 MLP VAE of ``vae_mlp_fmnist``
(Bernoulli likelihood, N(0, I) prior, diagonal Gaussian q(z|x), dynamic binarization), with the
checkpoint and evaluation settings the study needs.  Every grid cell is this config plus a few
overrides (see ``quick.py`` and ``full.py``).

Command (one model alone)::

    vaegen train --config experiments/amortization/configs/base.py --workdir runs/amortization/base
    vaegen gaps --workdir runs/amortization/base --family diag,fullcov,flow

Runtime: as ``vae_mlp_fmnist`` (~3 s per epoch on a 2-core CPU; 100 epochs ~5 min), and the gap
decomposition of the whole test set with 500 SVI steps ~10 min per family on that CPU.
Expected: an amortization gap of a few nats that grows with training and is larger on the test
set than on the training set, and an approximation gap of the diagonal family of a few nats
(Cremer et al. 2018 report 2-4 nats each on MNIST/Fashion-MNIST for this architecture).
"""

from vaegen.config.presets import vae_mlp_fmnist


def get_config(arg: str | None = None):
    del arg
    c = vae_mlp_fmnist.get_config()
    c.train.num_epochs = 100
    c.train.progress = False
    c.train.keep_checkpoints = 1  # the study trains in stages and measures the gaps between them
    c.gaps.families = "diag"
    c.gaps.num_steps = 500
    c.gaps.learning_rate = 1e-2
    c.gaps.log_px_samples = 1000
    c.gaps.test_examples = 0
    c.gaps.train_examples = 10000
    return c
