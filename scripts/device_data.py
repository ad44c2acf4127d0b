"""Copies a prepared dataset for a machine without tensorflow-datasets (a bare accelerator image): its
``dataset_info.json`` and the arrays vaegen caches beside it, compressed, into
``<out>/<name>/<version>/``.  There, with ``TFDS_DATA_DIR=<out>``, vaegen reads the dataset from these
arrays alone (:func:`vaegen.data.datasets.cached_dataset_dir`), the same images in the same order.

    python scripts/device_data.py --out .device-data             # Fashion-MNIST, ~30 MB; .device-data/ is git-ignored
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil

import numpy as np

from vaegen.data import datasets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="fashion_mnist")
    p.add_argument("--out", default=".device-data")
    p.add_argument("--data-dir", default=None, help="the TFDS data directory it is prepared in (default TFDS's)")
    args = p.parse_args()
    data_dir = datasets._resolve_data_dir(args.data_dir)
    builder = datasets._builder(args.name, data_dir)
    source = pathlib.Path(os.fspath(builder.data_path))
    target = pathlib.Path(args.out) / args.name / source.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "dataset_info.json", target / "dataset_info.json")
    sizes = {}
    for split in ("train", "test"):
        datasets.load_split(args.name, split, data_dir)       # makes the cache if it is not there
        with np.load(datasets._cache_path(source, split), allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
        path = datasets._cache_path(target, split)
        np.savez_compressed(path, **arrays)
        sizes[split] = path.stat().st_size
    print(json.dumps({"copied": str(target), "bytes": sizes}))


if __name__ == "__main__":
    main()
