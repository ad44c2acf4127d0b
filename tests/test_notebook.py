"""The notebook of the seed question runs from top to bottom (with fewer epochs and images)."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # the notebook, executed in a kernel of its own

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "docs" / "why_vae_generative.ipynb"
QUICK = "EPOCHS = 1\nTEST_IMAGES = 20\nIS_SAMPLES = 20"


def test_the_notebook_runs_and_answers_the_question():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    parameters = nb.cells[1]
    assert parameters.cell_type == "code" and parameters.source.startswith("# Parameters")
    parameters.source = QUICK
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=False).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.output_type == "stream" and o.name == "stdout")
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images == 2  # the VAE's samples beside the AE's decoder on z ~ N(0, I); the ex-post GMM's
    stderr = [o.text for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"the notebook prints warnings, which the site would show: {stderr}"
    assert "AE: this model has no prior p(z)" in text
    distances = [line for line in text.splitlines() if line.startswith("distance to the nearest training code")]
    assert len(distances) == 1 and "held-out code" in distances[0] and "draw of N(0, I)" in distances[0]
    assert "the ELBO is undefined for a point-mass posterior" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith(("vae ", "ae+gmm "))}
    assert set(rows) == {"vae", "ae+gmm"} and "point mass" in rows["ae+gmm"]
    # The ELBO of a Gaussian code of width s falls without bound as s -> 0 (KL ~ -D log s).
    widths = [line.split() for line in text.splitlines() if line.strip().startswith(("1e+00", "1e-01", "1e-06"))]
    elbos = [float(w[-1]) for w in widths]
    assert len(elbos) == 3 and elbos[0] > elbos[1] > elbos[2]
