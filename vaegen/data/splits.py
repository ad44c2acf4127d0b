"""A run's data: which dataset, how it is split and binarized (:class:`DataSettings`, the
``data`` section of a config), and the splits as a run stores and sees them.

Every split is kept as ``uint8`` grey levels; :func:`stored_split` binarizes held-out splits
once (a dynamic protocol's validation and test sets are one fixed draw), and the model sees a
batch through :func:`vaegen.data.binarization.to_float` under :func:`split_protocol`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from vaegen.data import binarization
from vaegen.data import checks
from vaegen.data import datasets
from vaegen.data import protocols
from vaegen.errors import ConfigError
from vaegen.registry import Settings, setting


@dataclasses.dataclass(frozen=True)
class DataSettings(Settings):
    """The ``data`` section: the dataset, its splits and its binarization protocol."""

    name: str = setting("fashion_mnist", "the dataset: TFDS fashion_mnist, mnist, binarized_mnist, cifar10; "
                        "scikit-learn's digits", choices=datasets.DATASETS)
    data_dir: str = setting("", "TFDS data dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets")
    auto_prepare: bool = setting(True, "prepare the TFDS dataset (download / local import) if missing")
    binarization: str = setting("dynamic", "dynamic: a fresh Bernoulli draw of the grey levels per batch; static: one "
                                "draw with binarization_seed; threshold: x > 0.5; none: grey levels in [0, 1]; real: float vectors "
                                "[N, D] given in memory (e.g. codes for an ex-post density), as they are. "
                                "Held-out sets under dynamic are binarized once (static)",
                                choices=binarization.BINARIZATIONS)
    binarization_seed: int = setting(0, "seed of the once-only draws (+1 validation, +2 test)")
    validation_size: int = setting(10000, "examples held out of the training split", ge=0)
    validation_seed: int = setting(0, "seed of the permutation that takes them out (validation_mode=random)")
    validation_mode: str = setting("random", "random: a seeded permutation; tail: the last validation_size examples "
                                   "(IWAE's 59,600 / 400 MNIST split); split: the dataset's own validation split "
                                   "(binarized_mnist)", choices=datasets.VALIDATION_MODES)
    protocol: str = setting("", "a named data protocol (vaegen.data.protocols): '' = the keys as set; a name checks "
                            "that the data keys are that protocol's and records it with the run")
    max_train_examples: int = setting(0, "0 = all", ge=0)
    max_test_examples: int = setting(0, "0 = all", ge=0)

    def validate(self, key):
        if self.validation_mode == "split" and self.name != "binarized_mnist":
            raise ConfigError(f"{key('validation_mode')}=split uses the dataset's own validation split, which only "
                              "binarized_mnist has; use random or tail")
        if self.protocol:
            protocols.check(self, key)


_SPLIT_SEED_OFFSET = {"train": 0, "validation": 1, "test": 2}


def split_protocol(data: DataSettings, split: str) -> str:
    """The binarization protocol of a split: the configured one for training, and for held-out
    splits :func:`vaegen.data.binarization.eval_protocol` of it (a dynamic protocol's held-out
    sets are binarized once)."""
    return data.binarization if split == "train" else binarization.eval_protocol(data.binarization)


def stored_split(data: DataSettings, x_u8: np.ndarray, split: str) -> jax.Array:
    """A split as it is stored on the device (uint8): binarized once where its protocol says so,
    with seed ``binarization_seed`` + (0 train, 1 validation, 2 test)."""
    seed = int(data.binarization_seed) + _SPLIT_SEED_OFFSET[split]
    return binarization.binarize_once(x_u8, split_protocol(data, split), seed)


def model_view(data: DataSettings, x_u8: np.ndarray, split: str) -> np.ndarray:
    """A held-out split as the model sees it: float32 ``[N, *event]``, binarized once under the
    split's protocol (the same draw as in training and evaluation)."""
    if split == "train" and data.binarization == "dynamic":
        raise ValueError("the training split is binarized afresh for every batch; ask for 'validation' or 'test'")
    return np.asarray(binarization.to_float(None, stored_split(data, x_u8, split), split_protocol(data, split)))


def load_data(data: DataSettings, *, support: str) -> datasets.Splits:
    """The run's splits, checked (:func:`vaegen.data.checks.check_splits`: shapes, dtype, and the
    likelihood's ``support`` on what the model will see)."""
    try:
        splits = datasets.load_splits(data)
    except ValueError as e:
        if type(e) is not ValueError:  # e.g. IDXFormatError: already a clear error of its own
            raise
        raise ConfigError(str(e).rstrip(".")) from None
    checks.check_splits(splits, support=support, binarization=data.binarization, dataset=data.name)
    return splits
