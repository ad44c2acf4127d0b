"""The full gradient-estimator study, meant for a GPU: the whole Fashion-MNIST training split
(50,000 images, dynamic binarization), the 784-200-200-50 tanh architecture of ``vae_mlp_fmnist``,
300 epochs with k = 64 importance samples (Rainforth et al. 2018 train with M k = 64), every
estimator and the multi-sample objectives of Rainforth et al.

(a) The gradient SNR at the parameters of the IWAE (reparameterized) model after training, for
IWAE_k's gradient with k = 1, 4, 16, 64, 256, 1024 and reparam, stl, dreg, on a fixed minibatch of
16 test images, 1000 draws in 10 jackknife blocks.
(b) Each model's test log p(x) (importance sampling with k = 5000, best of the amortized q and q*)
and amortization gap (q* by 500 Adam steps per image, ELBOs with 100 samples) on 2000 test images.

Cells::

    iwae_reparam / iwae_stl / iwae_dreg   IWAE_64 with each gradient estimator
    miwae_8x8 / miwae_8x8_dreg            MIWAE(M=8, k=8), reparameterized and DReG
    ciwae_05                              CIWAE(beta = 0.5), k = 64
    piwae_8x8 / piwae_8x8_dreg            PIWAE: decoder on IWAE_64, encoder on MIWAE(8, 8)
    elbo / elbo_stl                       the ELBO with 64 samples (analytic KL), and its STL (Monte Carlo KL)

Command::

    python experiments/snr/run.py --preset full --out runs/snr/full

Runtime: not measured (no GPU was available); on the 2-core CPU the training alone would take days.
Expected (Rainforth et al. 2018; Tucker et al. 2019): IWAE's encoder SNR falling like 1/sqrt(k),
DReG's not; the decoder's rising with k for all; DReG and PIWAE/MIWAE with the best encoders
(smaller amortization gaps) at a log p(x) as good as IWAE's.
"""

import importlib.util
import pathlib

EPOCHS = 300
K_TRAIN = 64

SNR_MODEL = "iwae_reparam"
SNR_KS = (1, 4, 16, 64, 256, 1024)
SNR_ESTIMATORS = ("reparam", "stl", "dreg")
SNR_EXAMPLES = 16
SNR_DRAWS = 1000
SNR_BLOCKS = 10

PRESET = [
    "gaps.families='diag'",
    "gaps.num_steps=500",
    "gaps.learning_rate=0.01",
    "gaps.elbo_samples=100",
    "gaps.log_px_samples=5000",
    "gaps.test_examples=2000",
    "gaps.train_examples=0",
    "gaps.chunk_size=2000",
]

_IWAE = ["objective=iwae", f"objective.num_samples={K_TRAIN}"]
_MIWAE = ["objective=miwae", "objective.num_groups=8", "objective.num_samples=8"]
_PIWAE = ["objective=piwae", "objective.num_groups=8", "objective.num_samples=8"]

VARIANTS = {
    "iwae_reparam": ("reparam", f"IWAE_{K_TRAIN}, reparameterized", _IWAE),
    "iwae_stl": ("stl", f"IWAE_{K_TRAIN}, STL", _IWAE + ["objective.estimator=stl"]),
    "iwae_dreg": ("dreg", f"IWAE_{K_TRAIN}, DReG", _IWAE + ["objective.estimator=dreg"]),
    "miwae_8x8": ("reparam", "MIWAE(8, 8)", _MIWAE),
    "miwae_8x8_dreg": ("dreg", "MIWAE(8, 8), DReG", _MIWAE + ["objective.estimator=dreg"]),
    "ciwae_05": ("reparam", f"CIWAE(0.5), k = {K_TRAIN}", ["objective=ciwae", "objective.beta=0.5",
                                                            f"objective.num_samples={K_TRAIN}"]),
    "piwae_8x8": ("reparam", "PIWAE(8, 8)", _PIWAE),
    "piwae_8x8_dreg": ("dreg", "PIWAE(8, 8), encoder DReG", _PIWAE + ["objective.estimator=dreg"]),
    "elbo": ("reparam", f"ELBO, {K_TRAIN} samples", [f"objective.num_samples={K_TRAIN}"]),
    "elbo_stl": ("stl", f"ELBO, {K_TRAIN} samples, STL", [f"objective.num_samples={K_TRAIN}",
                                                          "objective.analytic_kl=false", "objective.estimator=stl"]),
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
