"""The quick gradient-estimator study: small enough for a 2-core CPU in under 20 minutes.

Fashion-MNIST with 10,000 training images (dynamic binarization), a 16-dimensional latent space
and one-hidden-layer (200) tanh networks, Bernoulli likelihood, N(0, I) prior; IWAE with k = 8
trained for 10 epochs with each gradient estimator.

(a) The gradient SNR at the parameters of the IWAE (reparameterized) model after its training: for
IWAE_k's gradient with k = 1, 4, 16, 64, 256 and the estimators reparam (IWAE), stl and dreg, on a
fixed minibatch of 4 test images, 200 draws in 10 jackknife blocks.
(b) Each trained model's test log p(x) (importance sampling, k = 500, best of the amortized q and
q*) and its amortization gap L[q*] - L[q] (q* by 100 Adam steps per image, ELBOs with 20
samples) on 300 test images.

Cells (``get_config("<name>")`` is the config of one training run)::

    iwae_reparam   IWAE_8, reparameterized gradients (Burda et al. 2016)
    iwae_stl       IWAE_8, sticking the landing (Roeder et al. 2017; biased for k > 1)
    iwae_dreg      IWAE_8, doubly reparameterized (Tucker et al. 2019)

Command::

    python experiments/snr/run.py --preset quick --out runs/snr/quick
    vaegen train --config experiments/snr/configs/quick.py:iwae_dreg --workdir /tmp/iwae_dreg   # one cell

Runtime: 3 min 21 s on the 2-core development CPU at commit 26a6330 (shared; training 21-26 s per
model, the SNR rows 80 s, log p(x) and gaps 24 s).
Expected (measured; docs/estimators.md has the tables with their command, commit and machine): the
encoder SNR of IWAE falling with k (0.52 at k = 1, 0.20 at k = 256), DReG's level (0.50-0.52 for
k = 4 to 64, 0.43 at 256), STL's rising (its gradient is biased for k > 1); the decoder's rising
with k (1.8 to 4.2); test log p(x) about -254.5 nats for all three models, amortization gaps of
6.8 (IWAE), 5.7 (DReG) and 5.3 (STL) nats from one training run each.
"""

import importlib.util
import pathlib

EPOCHS = 10
K_TRAIN = 8

SNR_MODEL = "iwae_reparam"      # the cell whose trained parameters the SNR is measured at
SNR_KS = (1, 4, 16, 64, 256)
SNR_ESTIMATORS = ("reparam", "stl", "dreg")
SNR_EXAMPLES = 4                # B, the fixed minibatch (test images)
SNR_DRAWS = 200
SNR_BLOCKS = 10

PRESET = [
    "data.max_train_examples=10000",
    "data.validation_size=1000",
    "model.latent_dim=16",
    "model.decoder.hidden=(200,)",
    "inference.encoder.hidden=(200,)",
    "train.batch_size=100",
    "gaps.families='diag'",
    "gaps.num_steps=100",
    "gaps.learning_rate=0.02",
    "gaps.elbo_samples=20",
    "gaps.log_px_samples=500",
    "gaps.test_examples=300",
    "gaps.train_examples=0",
    "gaps.chunk_size=300",
]

_IWAE = ["objective=iwae", f"objective.num_samples={K_TRAIN}"]

# name: (estimator, what it is, overrides)
VARIANTS = {
    "iwae_reparam": ("reparam", f"IWAE_{K_TRAIN}, reparameterized", _IWAE),
    "iwae_stl": ("stl", f"IWAE_{K_TRAIN}, STL", _IWAE + ["objective.estimator=stl"]),
    "iwae_dreg": ("dreg", f"IWAE_{K_TRAIN}, DReG", _IWAE + ["objective.estimator=dreg"]),
}


def _base():
    spec = importlib.util.spec_from_file_location("_snr_base", pathlib.Path(__file__).with_name("base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str | None = None):
    from vaegen.config import loading as config_lib

    name = arg or SNR_MODEL
    if name not in VARIANTS:
        raise ValueError(f"unknown cell {name!r}; cells: {', '.join(VARIANTS)}")
    c = _base().get_config()
    c.lock()
    config_lib.apply_overrides(c, PRESET + VARIANTS[name][2] + [f"train.num_epochs={EPOCHS}"])
    c.unlock()
    return c
