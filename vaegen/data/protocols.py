"""Named data protocols: the dataset, binarization and splits a published number was measured
under, so that a run says which one it follows and cannot drift from it unnoticed.

A config names its protocol in ``data.protocol``; :func:`check` (called by config validation)
refuses a config whose data keys differ from the protocol's, and the name is written to the
run's ``config.json`` with everything else.  :func:`apply` sets a protocol's keys (the
reproduction configs in ``experiments/reproduce`` use it).

=====================  =========================================================================
``vampprior_fmnist``   Fashion-MNIST as in the VampPrior / Exemplar-VAE code: training images
                       re-binarized by Bernoulli sampling of the grey levels every batch;
                       validation and test images binarized once with a fixed seed
                       (``data.binarization_seed`` + 1 and + 2); 50,000 / 10,000 random split
                       of the 60,000 training images.
``iwae_mnist``         MNIST as in the IWAE code (Burda et al. 2016): the first 59,600 training
                       images for training, the last 400 for validation; dynamic binarization.
                       The IWAE code re-binarizes the test images with a seeded generator when it
                       evaluates; here they are binarized once with a fixed seed (the same
                       expectation).
``static_mnist``       Larochelle's fixed binarization of MNIST (TFDS ``binarized_mnist``): its
                       own 50,000 / 10,000 / 10,000 train / validation / test splits.
``cifar10_8bit``       CIFAR-10 as 8-bit integers (a discretized likelihood; bits/dim), 45,000 /
                       5,000 random split of the training images, the 10,000 test images.
=====================  =========================================================================
"""

from __future__ import annotations

from typing import Any, Callable

from vaegen.errors import ConfigError

PROTOCOLS: dict[str, dict[str, Any]] = {
    "vampprior_fmnist": {"name": "fashion_mnist", "binarization": "dynamic", "validation_mode": "random",
                         "validation_size": 10000},
    "iwae_mnist": {"name": "mnist", "binarization": "dynamic", "validation_mode": "tail", "validation_size": 400},
    "static_mnist": {"name": "binarized_mnist", "binarization": "threshold", "validation_mode": "split"},
    "cifar10_8bit": {"name": "cifar10", "binarization": "none", "validation_mode": "random",
                     "validation_size": 5000},
}
"""Each protocol's ``config.data`` keys; every protocol also uses all examples
(``max_train_examples = max_test_examples = 0``)."""

_ALL_EXAMPLES = {"max_train_examples": 0, "max_test_examples": 0}


def settings(name: str) -> dict[str, Any]:
    """The ``config.data`` keys of protocol ``name``."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown data protocol {name!r}; protocols: {', '.join(PROTOCOLS)} "
                          "(or '' for the data keys as set)")
    return {**PROTOCOLS[name], **_ALL_EXAMPLES}


def apply(config: Any, name: str) -> None:
    """Sets ``config.data`` to protocol ``name`` and records the name in ``data.protocol``."""
    for key, value in settings(name).items():
        config.data[key] = value
    config.data.protocol = name


def check(data: Any, key: Callable[[str], str] = lambda name: f"config.data.{name}") -> None:
    """Raises :class:`vaegen.errors.ConfigError` if the data settings ``data`` (a
    :class:`vaegen.data.splits.DataSettings`) differ from their named protocol; ``key(field)``
    names a field in the message."""
    name = data.protocol
    wrong = [f"{key(k).removeprefix('config.')}={getattr(data, k)!r} (the protocol's is {v!r})"
             for k, v in settings(name).items() if getattr(data, k) != v]
    if wrong:
        raise ConfigError(f"{key('protocol')}={name!r} fixes the data keys, but {'; '.join(wrong)}: "
                          f"remove the override, or set --{key('protocol')}='' to run outside the protocol")
