"""The main job: a VAE and an AE with identical networks on Fashion-MNIST, compared like for like.

Both models use the same encoder trunk (784-200-200, tanh), the same decoder (50-200-200-784,
tanh), the same Bernoulli likelihood, the same data protocol, optimiser, trainer and
evaluation.  They differ only in q(z|x) (diagonal Gaussian vs point mass), in p(z) (N(0, I) vs
none) and hence in the objective (ELBO vs log p(x | z = f(x))).

``run(workdir)`` trains both (or resumes), evaluates both on the test set, writes sample and
reconstruction grids and ``summary.md``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Iterable

import jax
import numpy as np

from vaegen import files as files_lib
from vaegen.config import loading as config_lib
from vaegen.config.schema import to_spec
from vaegen.runs import evaluate as evaluate_lib
from vaegen.runs import run as run_lib
from vaegen.studies import figures
from vaegen.train import trainer as trainer_lib


def run(workdir: str | pathlib.Path = "runs/demo", *, overrides: Iterable[str] = (), epochs: int | None = None,
        k: int = 1000, vae_preset: str = "vae_mlp_fmnist", ae_preset: str = "ae_mlp_fmnist") -> dict:
    """Trains, evaluates and reports; returns the two evaluation results."""
    workdir = pathlib.Path(workdir)
    overrides = list(overrides) + ([f"train.num_epochs={epochs}"] if epochs else [])
    configs = {"vae": to_spec(config_lib.load_config(vae_preset, overrides)),
               "ae": to_spec(config_lib.load_config(ae_preset, overrides))}
    splits = trainer_lib.load_data(configs["vae"])
    seconds, results, runs = {}, {}, {}
    for name, cfg in configs.items():
        print(f"[demo] training the {name.upper()} ({cfg.train.num_epochs} epochs) in {workdir / name}")
        t = time.perf_counter()
        trainer_lib.train_and_evaluate(cfg, workdir / name, splits=splits)
        seconds[name] = time.perf_counter() - t
        runs[name] = run_lib.restore(workdir / name)
        print(f"[demo] evaluating the {name.upper()} on the test set")
        results[name] = evaluate_lib.evaluate(runs[name], dataclasses.replace(runs[name].spec.eval, num_samples=k),
                                              split="test")
        saved = evaluate_lib.save_json(workdir / name / "eval.json", results[name])
        print(evaluate_lib.format_table(results[name]))
        print(f"[demo] {saved.message()}")

    # Figures: samples of the VAE; reconstructions of both; what the AE's decoder makes of N(0, I).
    key = jax.random.key(0)
    test = runs["vae"].split("test", max_examples=16)
    vae, ae = runs["vae"], runs["ae"]
    z, _ = vae.sample_with_latents(key, 64)
    figures.save_grid(workdir / "vae_samples.png", np.asarray(vae.decode(z).mean()),
                      title="VAE: E[x|z], z ~ p(z) = N(0, I)")
    z_noise = jax.random.normal(key, (64, ae.spec.model.latent_dim))
    figures.save_grid(workdir / "ae_decoded_gaussian_noise.png", np.asarray(ae.decode(z_noise).mean()),
                      title="AE decoder at z ~ N(0, I): not samples of any model")
    for name, r in runs.items():
        rec = np.asarray(r.decode(r.encode(test).mean()).mean())
        figures.save_grid(workdir / f"{name}_reconstructions.png", figures.interleave_rows(test, rec, 8), ncols=8,
                          title=f"{name.upper()}: test images (odd rows), reconstructions (even rows)")

    codes = np.asarray(ae.encode(ae.split("test", max_examples=2000)).mean())
    code_stats = {
        "mean_norm_sq": float(np.mean(np.sum(codes**2, -1))),
        "prior_mean_norm_sq": float(codes.shape[-1]),
        "std_per_dim_min": float(codes.std(0).min()),
        "std_per_dim_max": float(codes.std(0).max()),
    }
    summary = _summary(configs, results, seconds, code_stats, k)
    files_lib.write_atomic(workdir / "summary.md", summary, kind="table")
    files_lib.write_json(workdir / "summary.json", {"results": results, "train_seconds": seconds,
                                                    "ae_code_stats": code_stats}, kind="table")
    print(summary)
    return results


def _fmt(m: dict | None) -> str:
    return "—" if m is None else f"{m['mean']:.2f} ± {m['stderr']:.2f}"


def _summary(configs, results, seconds, code_stats, k) -> str:
    v, a = results["vae"]["metrics"], results["ae"]["metrics"]
    cfg = configs["vae"]
    encoder, decoder = cfg.inference.encoder.settings, cfg.model.decoder.settings
    lines = [
        "# vaegen demo: VAE vs AE on Fashion-MNIST",
        "",
        f"Identical nets: encoder {encoder.hidden} {encoder.activation}, "
        f"decoder {decoder.hidden} {decoder.activation}, latent dim {cfg.model.latent_dim}, "
        f"Bernoulli likelihood, binarization '{cfg.data.binarization}', batch {cfg.train.batch_size}, "
        f"{cfg.train.num_epochs} epochs of Adam (lr {cfg.optim.learning_rate}).",
        f"Test set: {results['vae']['num_examples']} images. Nats per image (± standard error).",
        "",
        "| | VAE | AE |",
        "|---|---|---|",
        "| q(z\\|x) | diagonal Gaussian | point mass δ(z − f(x)) |",
        "| p(z) | N(0, I) | none |",
        "| training objective | ELBO | log p(x \\| z = f(x)) |",
        f"| test log p(x), IS k={k} | {_fmt(v.get('log_px'))} ({v['log_px']['bits_per_dim']:.4f} bits/dim) | undefined (no p(z)) |",
        f"| test ELBO | {_fmt(v.get('elbo'))} | undefined (KL = +∞) |",
        f"| test KL(q(z\\|x) ‖ p(z)) | {_fmt(v.get('kl'))} | undefined |",
        f"| test reconstruction log p(x \\| z) | {_fmt(v.get('reconstruction'))} (z ~ q) | {_fmt(a.get('reconstruction'))} (z = f(x)) |",
        f"| training time | {seconds['vae']:.0f} s | {seconds['ae']:.0f} s |",
        "",
        "![VAE samples](vae_samples.png) ![AE decoder at N(0, I)](ae_decoded_gaussian_noise.png)",
        "",
        "![VAE reconstructions](vae_reconstructions.png) ![AE reconstructions](ae_reconstructions.png)",
        "",
        "## What the numbers say",
        "",
        f"The AE reconstructs better ({a['reconstruction']['mean']:.1f} vs {v['reconstruction']['mean']:.1f} nats): it "
        "pays no KL, so its codes carry as much about x as the decoder can use. But it is not a generative "
        "model: it defines p(x | z) and no p(z), so there is no p(x) to evaluate and nothing to sample. "
        f"The VAE defines p(x) = E_p(z)[p(x|z)] and assigns the test set {v['log_px']['mean']:.1f} nats per image; "
        "its samples are draws from that distribution.",
        "",
        f"Decoding z ~ N(0, I) through the AE's decoder gives no meaningful images because its codes do not follow "
        f"N(0, I): their mean squared norm is {code_stats['mean_norm_sq']:.1f} where N(0, I) has "
        f"{code_stats['prior_mean_norm_sq']:.0f}, and their per-dimension spread ranges from "
        f"{code_stats['std_per_dim_min']:.2f} to {code_stats['std_per_dim_max']:.2f}. Fitting a density to the codes "
        "(and sampling it) is what it takes to make the AE generative.",
        "",
    ]
    return "\n".join(lines)
