"""The VQ-VAE (van den Oord et al. 2017) matching ``vae_mlp_fmnist``: identical encoder trunk,
decoder (its input is the same 50-dimensional z) and Bernoulli likelihood, same data protocol and
optimiser.  The encoder's output z_e [50] is cut into M = 10 groups of d = 5, each replaced by the
nearest of K = 512 codebook vectors (a moving-average codebook, decay 0.99; codes used less than
0.05 times per step on average are restarted at encoder outputs), the decoder gets the codes'
vectors through the straight-through gradient, and the objective is
log p(x | c*) - 0.25 ||z_e - sg(e_c*)||^2 (``vaegen.objectives.vq``).  There is no prior in
training: ``vaegen expost --density code_prior`` fits an autoregressive prior over the codes
afterwards and reports log p(x) (a deterministic and an importance-sampled lower bound).

Why 10 groups of 5 over 512 codes: the decoder keeps the VAE's 50 inputs, 10 positions keep the
prior over codes small and its proposal for importance sampling sharp, and M log K = 62 nats of
capacity is more than the information the VAE's codes carry about x (its KL, about 25 nats).

Command::

    vaegen train --config vq_mlp_fmnist --workdir runs/vq
    vaegen expost --workdir runs/vq --density code_prior

Runtime and expected results: see README (measured on the 2-core x86-64 development CPU).
"""

from vaegen.config.loading import component
from vaegen.config.presets import vae_mlp_fmnist


def get_config(arg: str | None = None):
    c = vae_mlp_fmnist.get_config()
    c.model.kind = component("model_kind", "vq_vae", codebook_size=512, code_dim=5, ema=True, ema_decay=0.99,
                             dead_code_threshold=0.05)
    c.model.prior = component("prior", "none")
    c.inference.posterior = component("posterior", "point_mass")
    c.objective = component("objective", "vq", commitment=0.25)
    return c
