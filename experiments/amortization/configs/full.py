"""The full amortization grid, meant for a GPU: whole Fashion-MNIST (50,000 training images,
dynamic binarization), the 784-200-200-50 architecture of Cremer et al. (2018) as the base, 100
epochs, gaps after epochs 1, 5, 25 and 100 on the whole test set and 10,000 training images
(q* by 500 Adam steps per image, log p(x) by importance sampling with k = 5000; the base cell
also with the full-covariance and flow families).

Cells (``get_config("<name>")``)::

    base           encoder (200, 200), decoder (200, 200), ELBO
    enc_50         encoder (50,)          enc_500x2   encoder (500, 500)     -- width and depth
    enc_200        encoder (200,)         enc_1000x2  encoder (1000, 1000)
    dec_50         decoder (50,)          dec_500x2   decoder (500, 500)     -- decoder width
    sa_k1 / sa_k5 / sa_k10 / sa_k20       semi-amortized, K unrolled SVI steps
    vae_svi_k20    VAE+SVI (stop-gradient), K = 20
    svi_k50        non-amortized training, 50 SVI steps from N(0, I)

Command::

    python experiments/amortization/run.py --grid full --out runs/amortization/full

Runtime: not measured (no GPU was available); on the 2-core CPU the training alone would take
about 15 hours.  On one H100 expect about 2 hours (training dominated by the SVI-in-the-loop
cells; q* for 10,000 images x 500 steps is the benchmark of scripts/bench_inference.py).
Expected (Cremer et al. 2018, Fashion-MNIST): amortization gaps of 2-5 nats growing over
training, larger on test than train, shrinking with a wider encoder and with larger decoders
fitting the encoder's q more closely; semi-amortized training closes part of the amortization
gap (Kim et al. 2018).
"""

import importlib.util
import pathlib

EPOCHS = (1, 5, 25, 100)

PRESET = [
    "gaps.num_steps=500",
    "gaps.learning_rate=0.01",
    "gaps.elbo_samples=100",
    "gaps.log_px_samples=5000",
    "gaps.test_examples=0",
    "gaps.train_examples=10000",
    "gaps.chunk_size=10000",
]

_SA = ["objective=semi_amortized", "objective.optimizer=adam", "objective.learning_rate=0.05"]

VARIANTS = {
    "base": ("baseline", "enc 200x2, dec 200x2, amortized", ["gaps.families=diag,fullcov,flow"]),
    "enc_50": ("encoder", "(50,)", ["inference.encoder.hidden=(50,)"]),
    "enc_200": ("encoder", "(200,)", ["inference.encoder.hidden=(200,)"]),
    "enc_500x2": ("encoder", "(500, 500)", ["inference.encoder.hidden=(500, 500)"]),
    "enc_1000x2": ("encoder", "(1000, 1000)", ["inference.encoder.hidden=(1000, 1000)"]),
    "dec_50": ("decoder", "(50,)", ["model.decoder.hidden=(50,)"]),
    "dec_500x2": ("decoder", "(500, 500)", ["model.decoder.hidden=(500, 500)"]),
    "sa_k1": ("svi_steps", "K=1", _SA + ["objective.steps=1"]),
    "sa_k5": ("svi_steps", "K=5", _SA + ["objective.steps=5"]),
    "sa_k10": ("svi_steps", "K=10", _SA + ["objective.steps=10"]),
    "sa_k20": ("svi_steps", "K=20", _SA + ["objective.steps=20"]),
    "vae_svi_k20": ("training", "VAE+SVI K=20 (stop)", _SA + ["objective.steps=20", "objective.gradient=stop"]),
    "svi_k50": ("training", "SVI K=50 (non-amortized)", _SA + ["objective.steps=50", "objective.init=prior",
                                                              "objective.gradient=stop"]),
}


def _base():
    spec = importlib.util.spec_from_file_location("_amortization_base", pathlib.Path(__file__).with_name("base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str | None = None):
    from vaegen.config import loading as config_lib

    name = arg or "base"
    if name not in VARIANTS:
        raise ValueError(f"unknown cell {name!r}; cells: {', '.join(VARIANTS)}")
    c = _base().get_config()
    c.lock()
    config_lib.apply_overrides(c, PRESET + VARIANTS[name][2] + [f"train.num_epochs={EPOCHS[-1]}"])
    c.unlock()
    return c
