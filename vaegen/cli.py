"""The ``vaegen`` command: thin wrappers that parse arguments and call the library.

    vaegen train     --config PRESET|FILE[:ARG] --workdir W [--config.key=value ...]
    vaegen evaluate  --workdir W [--estimators elbo,iwae,is,ais,bdmc,diagnostics] [--k 5000]
                     [--images PATH --binarize threshold|sample|none]   (your own images)
                     [--ks 1,5,50] [--ais-steps 1000 --ais-chains 16 --leapfrog 10] ...
    vaegen gaps      --workdir W [--family diag,fullcov,flow] [--steps 500] [--k 1000]
    vaegen sample    --workdir W [--n 64]
    vaegen reconstruct --workdir W [--n 32]
    vaegen data      prepare NAME [--from-dir DIR | --from-idx DIR] | list
    vaegen config    PRESET [--config.key=value ...]      (print the resolved config)
    vaegen demo      [--workdir runs/demo]
    vaegen compare   [--preset quick|full|tiny] [--workdir runs/compare] [--set KEY=VALUE ...]
    vaegen expost    --workdir W [--density gmm|flow|two_stage|diffusion|code_prior] [--components 10] [--k 100]
                     [--codes sample|mean] [--epochs 20] [--set KEY=VALUE ...]   (an AE + a density fitted to its codes)

Errors a user can fix (bad config, missing data, bad workdir, ...) print one line,
``vaegen: error: ...``, and exit with status 2; nothing in the workdir is modified.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import os
import pathlib
import sys

import jax
import numpy as np

from vaegen import compilation as compilation_lib
from vaegen import sharding as sharding_lib
from vaegen.config import loading as config_lib
from vaegen.config.schema import to_spec
from vaegen.data import datasets
from vaegen.data import images as images_lib
from vaegen.errors import (NO_PRIOR_MESSAGE, USER_ERRORS, ConfigError, InferenceError, NoPriorError,
                           TrainingInterrupted)
from vaegen.estimators import importance as importance_lib
from vaegen.spec.eval import SCHEDULES, STARTS, EvalSettings
from vaegen.inference import families as families_lib
from vaegen.inference.svi import SVISettings
from vaegen.registry import ESTIMATORS, describe, registries, registry
from vaegen.runs import evaluate as evaluate_lib
from vaegen.runs import run as run_lib
from vaegen.studies import compare_study, demo, expost, figures
from vaegen.studies import gaps as gaps_lib
from vaegen.studies import vq as vq_study
from vaegen.train import faults as faults_lib
from vaegen.train import trainer as trainer_lib
from vaegen.train import workdir as workdir_lib

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a one-line error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``vaegen: error: ...``, exit 2 (the usage
    is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"vaegen: error: {self.prog.removeprefix('vaegen ')}: {message}\n"
                  if self.prog != "vaegen" else f"vaegen: error: {message}\n")


def _split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return rest, overrides


def cmd_train(args, overrides) -> int:
    sharding_lib.initialize_distributed(coordinator_address=args.coordinator_address,
                                        num_processes=args.num_processes, process_id=args.process_id)
    spec = to_spec(config_lib.load_config(args.config, overrides))
    workdir = args.workdir or os.path.join("runs", args.config.split(":")[0].split("/")[-1].removesuffix(".py"))
    last = trainer_lib.train_and_evaluate(spec, workdir)
    if not sharding_lib.is_primary():
        return 0
    bound = spec.objective.build().bound_name
    if last:
        val = last.get(f"validation/{bound}")
        train = last.get(f"train/{bound}")
        msg = f"epoch {last['epoch']}: train {bound} " + ("nan" if train is None else f"{train:.3f}") + " nats"
        if val is not None:
            msg += f", validation {bound} {val:.3f} nats"
        print(msg)
    print(f"workdir: {workdir}")
    return 0


def _eval_settings(args, run: run_lib.Run) -> EvalSettings:
    """The run's evaluation settings with the command line's options (those given) in place."""
    s = run.spec.eval
    changes = {name: getattr(args, flag) for name, flag in (
        ("estimators", "estimators"), ("num_samples", "k"), ("chunk_size", "chunk_size"),
        ("is_proposal", "is_proposal"), ("elbo_samples", "elbo_samples"), ("mi_samples", "mi_samples"),
        ("ais_examples", "ais_examples"), ("bdmc_examples", "bdmc_examples")) if getattr(args, flag) is not None}
    if args.ks is not None:
        importance_lib.check_ks(args.ks, changes.get("num_samples", s.num_samples))
        changes["ks"] = tuple(args.ks)
    ais = {name: getattr(args, flag) for name, flag in (
        ("num_steps", "ais_steps"), ("num_chains", "ais_chains"), ("num_leapfrog", "leapfrog"),
        ("step_size", "step_size"), ("target_accept", "target_accept"), ("schedule", "schedule"),
        ("start", "ais_start")) if getattr(args, flag) is not None}
    if args.no_adapt_step_size:
        ais["adapt_step_size"] = False
    if ais:
        changes["ais"] = dataclasses.replace(s.ais, **ais)
    return dataclasses.replace(s, **changes)


def cmd_evaluate(args, overrides) -> int:
    if args.per_example and not args.per_example.endswith(".npz"):
        raise ConfigError(f"--per-example writes an .npz file; got {args.per_example!r}")
    if args.binarize and not args.images:
        raise ConfigError("--binarize applies to --images only (a split is binarized as its run's config says)")
    default_name = (f"eval_{pathlib.Path(args.images).stem}.json" if args.images else
                    f"eval_{args.density}.json" if args.density else "eval.json")
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / default_name
    workdir_lib.check_writable(out, option="--out")  # before the work, not after it (a read-only workdir)
    if args.per_example:
        workdir_lib.check_writable(pathlib.Path(args.per_example), option="--per-example")
    run = expost.load(args.workdir, density=args.density)
    images = (images_lib.load_images(args.images, event_shape=run.event_shape, binarize=args.binarize or "none",
                              support=run.spec.model.likelihood.trait("support"), seed=args.seed)
              if args.images else None)
    per_example = {} if args.per_example else None
    result = evaluate_lib.evaluate(run, _eval_settings(args, run), split=args.split, seed=args.seed,
                                   max_examples=args.max_examples, batch_size=args.batch_size,
                                   progress=not args.no_progress, per_example=per_example, images=images)
    print(evaluate_lib.format_table(result))
    evaluate_lib.write_json(out, result)
    print(f"wrote {out}")
    if args.per_example:
        print(f"wrote {evaluate_lib.write_per_example(args.per_example, per_example, result)}")
    return 0


def cmd_gaps(args, overrides) -> int:
    workdir_lib.check_writable((pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "gaps") / "gaps.md",
                               option="--out")
    run = run_lib.load(args.workdir, epoch=args.epoch)
    kw = gaps_lib.settings_from_spec(run.spec)
    g = run.spec.gaps
    if args.family:
        kw["families"] = [f.strip() for f in args.family.split(",") if f.strip()]
    for f in kw["families"]:
        families_lib.resolve(f)
    if args.split:
        kw["splits"] = [s.strip() for s in args.split.split(",") if s.strip()]
        for s in kw["splits"]:
            if s not in gaps_lib.SPLITS:
                raise InferenceError(f"unknown split {s!r} in --split; choose from {', '.join(gaps_lib.SPLITS)}")
    kw["settings"] = SVISettings(
        num_steps=args.steps if args.steps is not None else g.num_steps,
        learning_rate=args.lr if args.lr is not None else g.learning_rate,
        num_samples=args.samples_per_step if args.samples_per_step is not None else g.num_samples)
    for name, attr in (("init", "init"), ("elbo_samples", "elbo_samples"), ("log_px_samples", "k"),
                       ("chunk_size", "chunk_size")):
        if getattr(args, attr) is not None:
            kw[name] = getattr(args, attr)
    if args.test_examples is not None:
        kw["max_examples"]["test"] = args.test_examples
    if args.train_examples is not None:
        kw["max_examples"]["train"] = args.train_examples
        if args.train_examples == 0 and not args.split:
            kw["splits"] = [s for s in kw["splits"] if s != "train"]
        elif not args.split and "train" not in kw["splits"]:
            kw["splits"].append("train")
    report = gaps_lib.compute_gaps(run, seed=args.seed, **kw)
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "gaps"
    paths = gaps_lib.write_tables(report, out)
    print(gaps_lib.markdown_table(report.rows))
    print(f"wrote {paths['md']}, {paths['csv']}, {paths['json']}")
    return 0


def cmd_sample(args, overrides) -> int:
    run = expost.load(args.workdir, density=args.density)
    out = (pathlib.Path(args.out) if args.out else
           pathlib.Path(args.workdir) / (f"samples_{args.density}.png" if args.density else "samples.png"))
    if not run.has_latents:  # autoregressive: x ~ p(x), pixel by pixel
        _, probs = run.model.apply(run.variables, jax.random.key(args.seed), args.n, method="sample_with_probs")
        figures.save_grid(out, np.asarray(probs), title=f"p(x_d = 1 | x_<d) along {args.n} samples x ~ p(x)")
        print(f"wrote {out}")
        return 0
    if not run.has_prior:
        raise NoPriorError(f"cannot sample from {args.workdir}: {NO_PRIOR_MESSAGE}")
    z, _ = run.sample_with_latents(jax.random.key(args.seed), args.n)
    images = np.asarray(run.decode(z).mean())  # E[x | z]: pixel probabilities for a Bernoulli
    figures.save_grid(out, images, title=f"E[x | z], z ~ p(z) ({args.n} prior samples"
                                         + (f", p(z) the ex-post {args.density})" if args.density else ")"))
    print(f"wrote {out}")
    return 0


def cmd_reconstruct(args, overrides) -> int:
    run = run_lib.load(args.workdir)
    x = run.split(args.split, max_examples=args.n)
    z = run.encode(x).mean()
    recon = np.asarray(run.decode(z).mean())
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "reconstructions.png"
    ncols = min(8, args.n)
    figures.save_grid(out, figures.interleave_rows(x, recon, ncols), ncols=ncols,
                      title="data (odd rows) and E[x | z = E_q[z|x]] (even rows)")
    print(f"wrote {out}")
    return 0


def cmd_data(args, overrides) -> int:
    if args.action == "list":
        for name in datasets.DATASETS:
            status = "prepared" if datasets.is_prepared(name, args.data_dir or None) else "not prepared"
            print(f"{name:<18}{status}")
        return 0
    try:
        path = datasets.prepare(args.name, data_dir=args.data_dir or None, from_idx=args.from_idx,
                                from_dir=args.from_dir, download=not args.no_download)
    except ValueError as e:
        if type(e) is not ValueError:  # e.g. SourceFormatError: already a user error of its own
            raise
        raise ConfigError(str(e).rstrip(".")) from None
    print(f"{args.name} ready in {path}")
    return 0


def cmd_config(args, overrides) -> int:
    if args.components is not None:
        if args.preset:  # a config file's own components are registered when it loads
            config_lib.load_config(args.preset, overrides)
        kinds = [args.components] if args.components else [r.kind for r in registries()]
        for kind in kinds:
            registry(kind)  # an unknown kind is a ConfigError naming the kinds
        print((components_markdown if args.markdown else components_text)(kinds))
        return 0
    if not args.preset:
        print("presets: " + ", ".join(config_lib.presets()))
        print("components: vaegen config --components [KIND]  (kinds: " + ", ".join(r.kind for r in registries()) + ")")
        return 0
    print(config_lib.to_json(config_lib.load_config(args.preset, overrides)))
    return 0


def _default_text(value) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return repr(value) if isinstance(value, str) else str(value)


def components_text(kinds) -> str:
    """Every registered component of ``kinds`` with its settings: what ``vaegen config --components`` prints."""
    lines = []
    for kind in kinds:
        reg = registry(kind)
        lines.append(f"{reg.kind}: {reg.title}")
        for c in reg:
            alias = f" (also {', '.join(c.aliases)})" if c.aliases else ""
            origin = "" if c.builtin else f"  [{c.module}]"
            lines.append(f"  {c.name}{alias}{origin}: {c.summary}")
            for row in describe(c.settings):
                rng = f" [{row['range']}]" if row["range"] else ""
                lines.append(f"      {row['name']} = {_default_text(row['default'])}{rng}  {row['doc']}")
        lines.append("")
    return "\n".join(lines).rstrip()


def components_markdown(kinds) -> str:
    """The same as Markdown tables (the summary of docs/components.md, filled in when the site is built)."""
    out = []
    for kind in kinds:
        reg = registry(kind)
        out += [f"**{reg.kind}**: {reg.title}", "", "| name | what it is | settings (default) |", "|---|---|---|"]
        for c in reg:
            settings = "; ".join(f"`{r['name']}` ({_default_text(r['default'])})" for r in describe(c.settings)) or "—"
            alias = f" (`{'`, `'.join(c.aliases)}`)" if c.aliases else ""
            summary = c.summary.replace("``", "`")
            if reg.declares("reports") and c.trait("reports"):
                summary += f" Reports: {c.trait('reports')}."
            summary, settings = summary.replace("|", r"\|"), settings.replace("|", r"\|")
            out.append(f"| `{c.name}`{alias} | {summary} | {settings} |")
        out.append("")
    return "\n".join(out).rstrip()


def cmd_demo(args, overrides) -> int:
    demo.run(args.workdir, overrides=overrides, epochs=args.epochs, k=args.k)
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _density_settings(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` of ``vaegen expost``: the density's settings (values as Python literals, else strings)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set layers=8")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def _write_samples(gen, path: pathlib.Path, title: str, args) -> None:
    """A grid of E[x | z] for ``args.n`` draws z ~ p(z) of the generative run ``gen`` (seed ``args.seed``)."""
    z, _ = gen.sample_with_latents(jax.random.key(args.seed), args.n)
    figures.save_grid(path, np.asarray(gen.decode(z).mean()), title=title)
    print(f"wrote {path}")


def cmd_expost_learned(args) -> int:
    """``vaegen expost --density flow|two_stage|diffusion``: fit with the trainer, sample, evaluate."""
    fit = expost.FitSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             max_codes=args.max_codes, codes=args.codes, seed=args.seed,
                             density=_density_settings(args.set))
    expost.check_fit_settings(args.density, fit)  # unknown density settings: one line, before anything is read
    run = run_lib.load(args.workdir)
    gen, fitted, codes = expost.fit_learned(run, args.density, fit)
    out_dir = pathlib.Path(args.workdir) / "expost" / args.density
    info = fitted.info
    held = ("n/a" if info["validation_log_pz"] is None else
            f"{info['validation_log_pz']:.3f} +- {info['validation_log_pz_stderr']:.3f} nats ({info['log_pz_meaning']})")
    print(f"fitted the {args.density} density to {info['num_codes']} training codes ({info['codes_are']}) in "
          f"{info['fit_seconds']:.1f} s; held-out log p(z) on {info['num_validation_codes']} validation codes: {held}; "
          f"fit in {fitted.workdir}")
    _write_samples(gen, out_dir / "samples.png", f"E[x | z], z ~ ex-post {args.density} ({args.n} samples)", args)
    result: dict = {"density": info}
    if args.k:
        result = evaluate_lib.evaluate(gen, dataclasses.replace(gen.spec.eval, num_samples=args.k), split="test",
                                       max_examples=args.max_examples, seed=args.seed)
        result["proposal"] = ("q(z|x)" if not run.is_autoencoder else
                              "scale mixture of Gaussians around f(x) (vaegen.studies.expost.CodeProposal)")
        result["log_px_meaning"] = info["log_px_meaning"]
        result["density"] = info
        print(evaluate_lib.format_table(result))
        print(f"log p(x) here is a {info['log_px_meaning']}")
    evaluate_lib.write_json(out_dir / "eval.json", result)
    print(f"wrote {out_dir / 'eval.json'}")
    return 0


def cmd_expost_code_prior(args) -> int:
    """``vaegen expost --density code_prior``: a categorical MADE over a VQ-VAE's codes, fitted by the
    trainer in WORKDIR/expost/code_prior/fit; samples and log p(x) (bound and importance sampling)."""
    if args.temperature <= 0:
        raise ConfigError(f"--temperature={args.temperature} must be > 0 (tau of the proposal over codes)")
    fit = expost.FitSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             max_codes=args.max_codes, seed=args.seed, density=_density_settings(args.set))
    run = run_lib.load(args.workdir)
    m, k = vq_study.shape_of_codes(run)       # a VQ-VAE, or one line saying what to do
    vq_study.prior_spec(m, k, fit, num_validation=0)
    fitted = vq_study.fit_code_prior(run, fit)
    gen = vq_study.generative(run, fitted)
    info, usage = fitted.info, fitted.info["training_codebook_usage"]
    out_dir = pathlib.Path(args.workdir) / "expost" / vq_study.CODE_PRIOR
    held = ("n/a" if info["validation_log_pc"] is None else
            f"{info['validation_log_pc']:.3f} +- {info['validation_log_pc_stderr']:.3f} nats (exact; uniform "
            f"{info['uniform_log_pc']:.3f})")
    print(f"fitted the prior over codes (categorical MADE, {m} positions of {k} codes) to {info['num_codes']} "
          f"training codes in {info['fit_seconds']:.1f} s; held-out log p(c) on {info['num_validation_codes']} "
          f"validation codes: {held}; training codes: perplexity {usage['perplexity']:.1f}, {usage['used_codes']} "
          f"of {k} codes used; fit in {fitted.workdir}")
    _write_samples(gen, out_dir / "samples.png", f"E[x | e_c], c ~ code prior ({args.n} samples)", args)
    result: dict = {"density": info}
    if args.k:
        x = gen.split("test", max_examples=args.max_examples)
        result.update(vq_study.evaluate(gen, x, jax.random.key(args.seed), k=args.k, temperature=args.temperature))
        print(vq_study.format_summary(result))
    evaluate_lib.write_json(out_dir / "eval.json", result)
    print(f"wrote {out_dir / 'eval.json'}")
    return 0


def cmd_expost(args, overrides) -> int:
    if args.density == vq_study.CODE_PRIOR:
        return cmd_expost_code_prior(args)
    if args.density != "gmm":
        return cmd_expost_learned(args)
    if args.set:
        raise ConfigError("--set applies to the learned densities (--density flow|two_stage|diffusion), not gmm")
    run = run_lib.load(args.workdir)
    gen, mixture, codes = expost.fit(run, num_components=args.components, max_codes=args.max_codes, seed=args.seed)
    info = mixture.info
    print(f"fitted {info['estimator']} ({info['num_components']} components, {info['covariance_type']} covariance) "
          f"to {info['num_codes']} training codes; effective components {info['effective_components']:.1f}; "
          f"saved in {pathlib.Path(args.workdir) / 'expost'}")
    _write_samples(gen, pathlib.Path(args.workdir) / "expost" / "samples.png",
                   f"E[x | z], z ~ ex-post mixture ({args.n} samples)", args)
    if args.k:
        result = evaluate_lib.evaluate(gen, dataclasses.replace(gen.spec.eval, num_samples=args.k), split="test",
                                       max_examples=args.max_examples, seed=args.seed)
        result["proposal"] = ("q(z|x)" if not run.is_autoencoder else
                              "scale mixture of Gaussians around f(x) (vaegen.studies.expost.CodeProposal)")
        result["mixture"] = info
        print(evaluate_lib.format_table(result))
        evaluate_lib.write_json(pathlib.Path(args.workdir) / "expost" / "eval.json", result)
        print(f"wrote {pathlib.Path(args.workdir) / 'expost' / 'eval.json'}")
    return 0


def cmd_compare(args, overrides) -> int:
    only = [s for s in args.only.split(",") if s] if args.only else None
    settings = list(args.set or [])
    if args.epochs:
        settings += [f"epochs={args.epochs}", f"latent_map.epochs={args.epochs}"]
    summary = compare_study.run_study(args.workdir, preset=args.preset, settings=settings, overrides=overrides,
                                      only=only, progress=not args.no_progress)
    print(f"report: {summary['report']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vaegen", description="Deep latent-variable models in JAX: train, evaluate, sample.")
    p.add_argument("--compilation-cache", metavar="DIR|off", default=None,
                   help=f"JAX's persistent compilation cache (default ${compilation_lib.ENV_VAR}, else "
                        "$XDG_CACHE_HOME/vaegen/jax or ~/.cache/vaegen/jax); off disables it")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (resumes if the workdir has a checkpoint)",
                       description="Train a model. Any config key can be overridden with --config.KEY=VALUE "
                                   "(e.g. --config.model.latent_dim=2); unknown keys are errors.")
    t.add_argument("--config", required=True, help="preset name (see `vaegen config`) or path to a config .py, optionally :ARG")
    t.add_argument("--workdir", help="run directory (default runs/<preset>)")
    dist = t.add_argument_group("multi-host (docs/scaling.md); detected automatically on SLURM, Open MPI and Cloud TPU")
    dist.add_argument("--coordinator-address", help="host:port of process 0, for jax.distributed")
    dist.add_argument("--num-processes", type=_positive_int, help="number of processes (hosts)")
    dist.add_argument("--process-id", type=_non_negative_int, help="this process's index, 0 .. num-processes - 1")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="bounds, log-likelihood estimates and diagnostics on a held-out split; writes eval.json",
                       description="Evaluate a trained run with the chosen estimators (`vaegen config --components "
                                   "estimator` lists them). Options left out take their values from the run's "
                                   "config.eval.")
    e.add_argument("--workdir", required=True)
    e.add_argument("--density", choices=expost.DENSITIES, default=None,
                   help="evaluate the run with the ex-post density fitted to its codes before (`vaegen expost "
                        "--density NAME`) as p(z); default --out WORKDIR/eval_<density>.json")
    e.add_argument("--split", default="test", choices=("test", "validation"))
    e.add_argument("--images", metavar="PATH", help="score your own images instead of a split: .npy, .npz, IDX, or a "
                   "folder of PNGs (uint8 grey levels, floats in [0, 1] or binary); default --out "
                   "WORKDIR/eval_<name>.json")
    e.add_argument("--binarize", choices=images_lib.BINARIZE, default=None,
                   help="--images for a Bernoulli likelihood: threshold (x/255 > 0.5), sample (one Bernoulli draw "
                        "keyed by --seed) or none (the images are binary already)")
    e.add_argument("--estimators", default=None,
                   help=f"comma-separated: {','.join(c.name for c in sorted(ESTIMATORS, key=lambda c: c.trait('order')))} "
                        "or 'all' (default config.eval.estimators)")
    e.add_argument("--k", type=_positive_int, default=None, help="importance samples for IWAE_k / log p(x) (default config.eval.num_samples)")
    e.add_argument("--ks", type=_int_list, default=None, help="IWAE k's from the same samples, e.g. 1,5,50 (each <= --k)")
    e.add_argument("--chunk-size", type=_positive_int, default=None, help="importance samples drawn at once per example (memory only)")
    e.add_argument("--is-proposal", choices=STARTS, default=None, help="proposal of IS: q(z|x) or p(z)")
    e.add_argument("--elbo-samples", type=_positive_int, default=None, help="z ~ q(z|x) per example for the ELBO's reconstruction term")
    e.add_argument("--ais-steps", type=_positive_int, default=None, help="AIS: number of intermediate distributions")
    e.add_argument("--ais-chains", type=_positive_int, default=None, help="AIS: chains per example")
    e.add_argument("--leapfrog", type=_positive_int, default=None, help="AIS: leapfrog steps per HMC transition")
    e.add_argument("--step-size", type=float, default=None, help="AIS: initial HMC step size")
    e.add_argument("--target-accept", type=float, default=None, help="AIS: acceptance rate the step size adapts toward")
    e.add_argument("--no-adapt-step-size", action="store_true", help="AIS: keep the step size fixed")
    e.add_argument("--schedule", choices=SCHEDULES, default=None, help="AIS: inverse-temperature schedule")
    e.add_argument("--ais-start", choices=STARTS, default=None, help="AIS: start from p(z) or q(z|x)")
    e.add_argument("--ais-examples", type=_non_negative_int, default=None, help="AIS on the first n examples only (0 = all)")
    e.add_argument("--bdmc-examples", type=_non_negative_int, default=None, help="BDMC: examples (x, z) simulated from the model")
    e.add_argument("--mi-samples", type=_positive_int, default=None, help="diagnostics: z ~ q(z|x) per example for I_q(x; z)")
    e.add_argument("--seed", type=_non_negative_int, default=0)
    e.add_argument("--max-examples", type=_non_negative_int, default=0, help="evaluate the first n examples only")
    e.add_argument("--batch-size", type=_positive_int, default=None, help="examples vmapped together per device (memory only)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument("--out", help="JSON output path (default WORKDIR/eval.json; WORKDIR/eval_<name>.json with --images)")
    e.add_argument("--per-example", metavar="PATH.npz",
                   help="also write every metric's per-example values (nats) to this .npz, for paired comparisons")
    e.set_defaults(func=cmd_evaluate)

    g = sub.add_parser("gaps", help="the inference gap split into approximation and amortization gaps (Cremer et al.)",
                       description="Per example: log p(x) (importance sampling), L[q*_F] (per-example SVI in each "
                                   "family F) and L[q] (the encoder); writes gaps.md, gaps.csv, gaps.json. Defaults "
                                   "come from the run's config.gaps.")
    g.add_argument("--workdir", required=True)
    g.add_argument("--family", help=f"comma-separated variational families: {', '.join(families_lib.family_names())} "
                                    "(default config.gaps.families)")
    g.add_argument("--split", help="comma-separated splits: test, train, validation (default test and a train subset)")
    g.add_argument("--steps", type=_non_negative_int, help="SVI steps per example for q*")
    g.add_argument("--lr", type=float, help="Adam learning rate of the SVI steps (cosine-decayed)")
    g.add_argument("--samples-per-step", type=_positive_int, help="z samples per SVI step")
    g.add_argument("--init", choices=("amortized", "prior"), help="start q* from the encoder's q or from N(0, I)")
    g.add_argument("--elbo-samples", type=_positive_int, help="z samples for each reported ELBO")
    g.add_argument("--k", type=_positive_int, help="importance samples for log p(x)")
    g.add_argument("--test-examples", type=_non_negative_int, help="first n test examples (0 = all)")
    g.add_argument("--train-examples", type=_non_negative_int, help="size of the training subset (0 = no training split)")
    g.add_argument("--chunk-size", type=_positive_int, help="examples per vmapped chunk (memory only)")
    g.add_argument("--epoch", type=_positive_int, help="checkpoint epoch (default the latest)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", help="output directory (default WORKDIR/gaps)")
    g.set_defaults(func=cmd_gaps)

    s = sub.add_parser("sample", help="PNG grid of ancestral samples z ~ p(z), x ~ p(x|z)")
    s.add_argument("--workdir", required=True)
    s.add_argument("--n", type=_positive_int, default=64)
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.add_argument("--density", choices=expost.DENSITIES, default=None,
                   help="sample z from the ex-post density fitted to the codes before (`vaegen expost --density NAME`)")
    s.add_argument("--out", help="PNG path (default WORKDIR/samples.png, WORKDIR/samples_<density>.png with --density)")
    s.set_defaults(func=cmd_sample)

    r = sub.add_parser("reconstruct", help="PNG grid of held-out images and their reconstructions")
    r.add_argument("--workdir", required=True)
    r.add_argument("--n", type=_positive_int, default=32)
    r.add_argument("--split", default="test", choices=("test", "validation"))
    r.add_argument("--out", help="PNG path (default WORKDIR/reconstructions.png)")
    r.set_defaults(func=cmd_reconstruct)

    d = sub.add_parser("data", help="prepare or list datasets")
    dsub = d.add_subparsers(dest="action", required=True)
    dp = dsub.add_parser("prepare", help="prepare a TFDS dataset: download, or import local files")
    dp.add_argument("name")
    source = dp.add_mutually_exclusive_group()
    source.add_argument("--from-dir", help="directory with the dataset's original files: the four IDX files "
                                           "(mnist, fashion_mnist), or cifar-10-binary.tar.gz or its extracted "
                                           "cifar-10-batches-bin/ folder (cifar10)")
    source.add_argument("--from-idx", help="directory with the dataset's IDX files (.gz or not), e.g. /usr/share/datasets/fashion-mnist")
    dp.add_argument("--data-dir", help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    dp.add_argument("--no-download", action="store_true", help="never try to download")
    dl = dsub.add_parser("list", help="known datasets and whether they are prepared")
    dl.add_argument("--data-dir")
    d.set_defaults(func=cmd_data)

    c = sub.add_parser("config", help="list presets, print a preset's resolved config, or list the components",
                       description="Without arguments: the presets. With a preset (and --config.KEY=VALUE "
                                   "overrides): its resolved config as JSON. With --components [KIND]: every "
                                   "registered component (of KIND: " + ", ".join(r.kind for r in registries()) +
                                   ") with its settings and defaults, including a config file's own.")
    c.add_argument("preset", nargs="?")
    c.add_argument("--components", nargs="?", const="", default=None, metavar="KIND",
                   help="list registered components (all kinds, or one)")
    c.add_argument("--markdown", action="store_true", help="with --components: as Markdown tables")
    c.set_defaults(func=cmd_config)

    m = sub.add_parser("demo", help="the main job: VAE and AE with identical nets on Fashion-MNIST, evaluated, with figures and a summary")
    m.add_argument("--workdir", default="runs/demo")
    m.add_argument("--epochs", type=_positive_int, default=None, help="epochs for each model (default: the presets')")
    m.add_argument("--k", type=_positive_int, default=1000, help="importance samples for the VAE's test log p(x)")
    m.set_defaults(func=cmd_demo)

    x = sub.add_parser("expost", help="make a trained AE (or VAE) generative: fit a density (GMM, flow, second-stage VAE, diffusion) to its codes as p(z)",
                       description="Fits a BayesianGaussianMixture (full covariance) to the run's training codes, "
                                   "saves it in WORKDIR/expost, samples z ~ mixture, x ~ p(x|z) (expost/samples.png) "
                                   "and estimates test log p(x) by importance sampling (expost/eval.json).")
    x.add_argument("--workdir", required=True)
    x.add_argument("--components", type=_positive_int, default=10)
    x.add_argument("--max-codes", type=_positive_int, default=20000, help="training codes to fit to")
    x.add_argument("--n", type=_positive_int, default=64, help="samples in the grid")
    x.add_argument("--k", type=_non_negative_int, default=100, help="importance samples for log p(x) (0: skip the evaluation)")
    x.add_argument("--max-examples", type=_non_negative_int, default=1000, help="test images to evaluate (0 = all)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--density", default="gmm", choices=(*expost.DENSITIES, vq_study.CODE_PRIOR),
                   help="gmm: a Bayesian Gaussian mixture (--components); flow (exact log p(z)), two_stage (a second "
                        "VAE: log p(z) by importance sampling) or diffusion (a VDM: log p(z) >= its bound), fitted by "
                        "the trainer in WORKDIR/expost/DENSITY/fit, writing samples.png and eval.json there")
    x.add_argument("--codes", default="sample", choices=expost.CODE_KINDS,
                   help="learned densities: fit to z ~ q(z|x) (sample) or E[z|x] (mean); an AE's codes are f(x) either way")
    x.add_argument("--epochs", type=_positive_int, default=20, help="learned densities: epochs of the fit")
    x.add_argument("--batch-size", type=_positive_int, default=256, help="learned densities: batch of the fit")
    x.add_argument("--learning-rate", type=float, default=1e-3, help="learned densities: Adam's learning rate")
    x.add_argument("--temperature", type=float, default=vq_study.DEFAULT_TEMPERATURE,
                   help="code_prior: tau of the importance-sampling proposal prod_m softmax(-||z_e,m - e_k||^2 / tau)")
    x.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a setting of the learned density, e.g. --set layers=8 --set kind=coupling (repeatable; "
                        "`vaegen config --components` lists them)")
    x.set_defaults(func=cmd_expost)

    cp = sub.add_parser("compare", help="the headline study: VAE vs AE and the ways to make an AE generative; writes a report",
                        description="Trains a VAE, a beta sweep, fixed-variance VAEs on the way to the AE, the AE, an RAE, a "
                                    "denoising AE and MADE with the same nets and likelihood; fits ex-post mixtures to the "
                                    "codes; measures log p(x), sample quality and prior holes; writes "
                                    "WORKDIR/report/report.md with figures. Resumes: trained models and evaluated rows "
                                    "are reused. --config.KEY=VALUE applies to every model.")
    cp.add_argument("--preset", default="quick", choices=("tiny", "quick", "full"),
                    help="quick: minutes on a CPU; full: for a GPU; tiny: 8x8 digits, seconds")
    cp.add_argument("--workdir", default="runs/compare")
    cp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="change a study setting, e.g. --set eval.k=500 --set betas=(0.1,0.5) (repeatable)")
    cp.add_argument("--epochs", type=_positive_int, default=None, help="epochs of every model (sets epochs and latent_map.epochs)")
    cp.add_argument("--only", default="", help="comma-separated variants to run, e.g. vae,ae (default: all)")
    cp.add_argument("--no-progress", action="store_true", help="no progress bars")
    cp.set_defaults(func=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_config_overrides(argv)
    parser = build_parser()
    args = parser.parse_args(rest)  # a usage error: one line and SystemExit(2)
    compilation_lib.enable(args.compilation_cache)
    if overrides and args.command not in ("train", "config", "demo", "compare"):
        parser.error(f"--config.* overrides only apply to train, config, demo and compare, not {args.command}")
    try:
        config_lib.check_distinct(overrides)
        with _workdir_lock(args):
            return args.func(args, [o.removeprefix("--") for o in overrides])
    except USER_ERRORS as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"vaegen: error: {msg}", file=sys.stderr)
        faults_lib.quiet_background_errors()
        return EXIT_USAGE
    except OSError as e:  # a write that no writer of vaegen reports itself (a full disk)
        if not faults_lib.is_disk_full(e):
            raise
        print(f"vaegen: error: {faults_lib.disk_full_error(e.filename or 'a file', 'files written before are kept')}",
              file=sys.stderr)
        faults_lib.quiet_background_errors()
        return EXIT_USAGE
    except TrainingInterrupted as e:
        print(f"vaegen: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vaegen: interrupted (nothing more was saved; what was written before is kept, and `vaegen train` "
              "resumes from its latest checkpoint)", file=sys.stderr)
        faults_lib.quiet_background_errors()
        return 130


def _workdir_lock(args):
    """The commands other than ``train`` that write into a run (``gaps`` without ``--out``,
    ``expost``) hold its workdir while they run (:func:`vaegen.train.workdir.lock`); ``train``
    holds it in the trainer."""
    writes_into_run = args.command == "expost" or (args.command == "gaps" and not args.out)
    if writes_into_run and (pathlib.Path(args.workdir) / workdir_lib.CONFIG_FILE).is_file():
        if args.command == "gaps":  # a read-only workdir: say that --out writes elsewhere
            workdir_lib.check_writable(pathlib.Path(args.workdir) / "gaps" / "gaps.md", option="--out")
        return workdir_lib.lock(args.workdir, args.command)
    return contextlib.nullcontext()


if __name__ == "__main__":
    sys.exit(main())
