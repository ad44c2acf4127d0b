"""The quick amortization grid: small enough for a 2-core CPU in minutes, same axes as ``full.py``.

Fashion-MNIST with 10,000 training images (dynamic binarization), a 16-dimensional latent space
and one-hidden-layer networks; 10 epochs; gaps after epochs 1, 3 and 10 on 300 test and 300
training images (q* by 200 Adam steps per image, ELBOs with 50 samples, log p(x) by importance
sampling with k = 200).

Cells (``get_config("<name>")`` is the config of one cell)::

    base         encoder (200,), decoder (200,), ELBO (amortized training)
    enc_32       encoder (32,)                        -- encoder width
    enc_200x2    encoder (200, 200)                   -- encoder depth
    dec_64       decoder (64,)                        -- decoder width
    dec_500      decoder (500,)
    sa_k2        semi-amortized, K = 2 unrolled SVI steps (Kim et al. 2018)
    sa_k5        semi-amortized, K = 5
    vae_svi_k5   amortized init, K = 5, stop-gradient (encoder on its own ELBO)
    svi_k10      non-amortized training: K = 10 SVI steps from N(0, I) (encoder trained beside)

Command::

    python experiments/amortization/run.py --grid quick --out runs/amortization/quick
    vaegen train --config experiments/amortization/configs/quick.py:sa_k5 --workdir /tmp/sa_k5   # one cell

Runtime: 6 minutes per seed on a 2-core CPU (``--train-seeds 0,1,2``: 17 minutes): training ~2.5
minutes, the SVI-in-the-loop cells the slowest; each gap measurement a few seconds after its
cell's first compilation.
Expected (measured over seeds 0, 1, 2; test split, epoch 10, family diag; mean ± s.e. across the
three runs): the base model has log p(x) ~ -256 nats, an approximation gap of 1.8 ± 0.03 and an
amortization gap of 3.5 ± 0.2 nats; both shrink over these first 10 epochs (4.8 -> 3.5 for the
amortization gap) and train and test agree (no overfitting yet at this budget).  A narrower
encoder has a larger amortization gap (enc_32: 5.6 ± 0.1) and the same approximation gap.
Semi-amortized training gives encoders that are good *initialisations* rather than good
posteriors (amortization gaps of 6.7 ± 0.7 at K = 2 and 10.7 ± 0.6 at K = 5 for L[q] alone, with
a run-to-run sd of about 1.1 nats); non-amortized SVI from N(0, I) with K = 10 trains a much worse
model (-307) in this budget.  A single run's ± are over images, not runs: use ``--train-seeds``.
"""

import importlib.util
import pathlib

EPOCHS = (1, 3, 10)

PRESET = [
    "data.max_train_examples=10000",
    "data.validation_size=1000",
    "model.latent_dim=16",
    "model.decoder.hidden=(200,)",
    "inference.encoder.hidden=(200,)",
    "train.batch_size=100",
    "gaps.num_steps=200",
    "gaps.learning_rate=0.01",
    "gaps.elbo_samples=50",
    "gaps.log_px_samples=200",
    "gaps.test_examples=300",
    "gaps.train_examples=300",
    "gaps.chunk_size=300",
]

_SA = ["objective=semi_amortized", "objective.optimizer=adam", "objective.learning_rate=0.05"]

# name: (axis, value, overrides)
VARIANTS = {
    "base": ("baseline", "enc 200, dec 200, amortized", []),
    "enc_32": ("encoder", "(32,)", ["inference.encoder.hidden=(32,)"]),
    "enc_200x2": ("encoder", "(200, 200)", ["inference.encoder.hidden=(200, 200)"]),
    "dec_64": ("decoder", "(64,)", ["model.decoder.hidden=(64,)"]),
    "dec_500": ("decoder", "(500,)", ["model.decoder.hidden=(500,)"]),
    "sa_k2": ("svi_steps", "K=2", _SA + ["objective.steps=2"]),
    "sa_k5": ("svi_steps", "K=5", _SA + ["objective.steps=5"]),
    "vae_svi_k5": ("training", "VAE+SVI K=5 (stop)", _SA + ["objective.steps=5", "objective.gradient=stop"]),
    "svi_k10": ("training", "SVI K=10 (non-amortized)", _SA + ["objective.steps=10", "objective.init=prior",
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
