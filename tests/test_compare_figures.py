"""The comparison report's headline figure stays readable at a page's column width."""

import types

import numpy as np
from PIL import Image

from vaegen.studies import compare_report

HEADLINE = ["data", "vae", "ae+n01", "ae+gmm", "ae+flow", "ae+two_stage", "ae+diffusion", "rae+gmm", "wae", "aae",
            "vq+prior", "dae", "made"]


def test_the_headline_is_rows_of_a_few_large_panels(tmp_path):
    (tmp_path / "rows").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for name in HEADLINE:
        np.savez(tmp_path / "rows" / f"{name}.samples.npz", display=rng.random((36, 28, 28, 1), dtype=np.float32))
        rows.append(types.SimpleNamespace(name=name, label=name.upper(), sampled_from="somewhere"))
    results = {name: {"samples": {"fd": 1.0}} for name in HEADLINE}
    paths = compare_report.samples_figures(types.SimpleNamespace(workdir=tmp_path), rows, results, tmp_path)
    width, height = Image.open(paths["headline"]).size
    # 13 panels, five to a row: three rows about 1000 px wide (one strip of 13 was 1500 px of
    # 110-px panels, shrunk to half at a column's width)
    assert 800 <= width <= 1000, width
    assert height >= 3 * 0.9 * width / compare_report.HEADLINE_COLUMNS, (width, height)
