"""``vaegen compare``: the headline study (:mod:`vaegen.studies.compare`)."""

from __future__ import annotations

from vaegen.cli.common import positive_int
from vaegen.studies import compare, compare_study


def cmd_compare(args, overrides) -> int:
    only = [s for s in args.only.split(",") if s] if args.only else None
    settings = list(args.set or [])
    if args.epochs:
        settings += [f"epochs={args.epochs}", f"latent_map_epochs={args.epochs}"]
    if args.seeds:
        settings += [f"seeds={args.seeds}"]
    summary = compare_study.run_study(args.workdir, preset=args.preset, settings=settings, overrides=overrides,
                                      only=only, progress=not args.no_progress,
                                      budget_seconds=None if args.budget is None else 60.0 * args.budget)
    print(f"report: {summary['report']}")
    return 0


def add(sub) -> None:
    cp = sub.add_parser("compare", help="the headline study: VAE vs AE and the ways to make an AE generative; writes a report",
                        description="Trains a VAE, a beta sweep, fixed-variance VAEs on the way to the AE, the AE, an RAE, "
                                    "a WAE, an AAE, a VQ-VAE, a denoising AE and MADE with the same nets and likelihood; "
                                    "makes each generative with the recipes of the study (its own prior, N(0, I), densities "
                                    "fitted to the codes, ...); measures log p(x), sample quality and prior holes; writes "
                                    "WORKDIR/report/report.md with figures. Resumes: trained models and evaluated rows "
                                    "are reused. --config.KEY=VALUE applies to every model.")
    cp.add_argument("--preset", default="quick", choices=compare.PRESETS,
                    help="quick: ~10 min on a 2-core CPU; standard: early-stopped, 3 seeds, paired "
                         "(91 min for the three seeds measured on a quiet 2-core CPU); full: "
                         "for a GPU; tiny: 8x8 digits, seconds")
    cp.add_argument("--workdir", default="runs/compare")
    cp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="change a study setting, e.g. --set eval.k=500 --set betas=(0.1,0.5) "
                         "--set \"expost.recipes=('gmm','flow')\" (repeatable)")
    cp.add_argument("--epochs", type=positive_int, default=None, help="epochs of every model (sets epochs and latent_map_epochs)")
    cp.add_argument("--seeds", type=positive_int, default=None,
                    help="train every model this many times (other initialisations and data orders; the same test images "
                         "and draws) and report the spread over seeds beside each paired difference")
    cp.add_argument("--only", default="", help="comma-separated variants to run, e.g. vae,ae (default: all)")
    cp.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                    help="start no model or row after this many minutes (a lent GPU's time): the report covers the "
                         "first seed as far as it got and every later seed measured in full, and lists what it skipped; "
                         "finished models and rows are reused past it, so --budget 0 reports what a stopped study finished")
    cp.add_argument("--no-progress", action="store_true", help="no progress bars")
    cp.set_defaults(func=cmd_compare, accepts_overrides=True)
