"""``vaegen evaluate``: bounds, log-likelihood estimates and diagnostics of a trained run (its flags
are the settings of the run's ``eval`` section, :class:`vaegen.spec.eval.EvalSettings`)."""

from __future__ import annotations

import pathlib

from vaegen.cli.common import add_settings_flags, non_negative_int, positive_int, settings_from_flags
from vaegen.data import images as images_lib
from vaegen.errors import ConfigError
from vaegen.estimators import importance as importance_lib
from vaegen.spec.eval import EvalSettings
from vaegen.runs import evaluate as evaluate_lib
from vaegen.runs import loading
from vaegen.runs.recipes import RECIPES
from vaegen.train import workdir as workdir_lib

_FLAGS: list = []


def eval_settings(args, base: EvalSettings) -> EvalSettings:
    """The run's evaluation settings with the command line's flags (those given) in place."""
    settings = settings_from_flags(args, _FLAGS, base)
    if args.ks is not None:
        importance_lib.check_ks(args.ks, settings.num_samples)
    return settings


def cmd_evaluate(args, overrides) -> int:
    if args.per_example and not args.per_example.endswith(".npz"):
        raise ConfigError(f"--per-example writes an .npz file; got {args.per_example!r}")
    if args.binarize and not args.images:
        raise ConfigError("--binarize applies to --images only (a split is binarized as its run's config says)")
    default_name = (f"eval_{pathlib.Path(args.images).stem}.json" if args.images else
                    f"eval_{args.density}.json" if args.density else "eval.json")
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / default_name
    # Every output path before the work, not after it (a read-only workdir, a directory named by --out).
    workdir_lib.check_writable(out, option="--out", default_name=default_name)
    if args.per_example:
        workdir_lib.check_writable(pathlib.Path(args.per_example), option="--per-example",
                                   default_name="per_example.npz")
        if pathlib.Path(args.per_example).absolute() == out.absolute():
            raise ConfigError(f"--per-example {args.per_example} is also the --out path of the result; give them "
                              "different paths")
    run = loading.load(args.workdir, density=args.density)
    images = (images_lib.load_images(args.images, event_shape=run.event_shape, binarize=args.binarize or "none",
                              support=run.spec.model.likelihood.trait("support"), seed=args.seed)
              if args.images else None)
    per_example = {} if args.per_example else None
    result = evaluate_lib.evaluate(run, eval_settings(args, run.spec.eval), split=args.split, seed=args.seed,
                                   max_examples=args.max_examples, batch_size=args.batch_size,
                                   progress=not args.no_progress, per_example=per_example, images=images)
    print(evaluate_lib.format_table(result))
    # Every result is kept: one that replaces an earlier file keeps that file as NAME.1.json, ...
    print(evaluate_lib.save_json(out, result).message())
    if args.per_example:
        print(evaluate_lib.save_per_example(args.per_example, per_example, result).message())
    return 0


def add_density(parser, what: str) -> None:
    """``--density NAME``: a registered recipe (``vaegen config --components recipe``)."""
    parser.add_argument("--density", choices=RECIPES.names() + sorted(a for c in RECIPES for a in c.aliases),
                        default=None, metavar="NAME",
                        help=f"{what} with the recipe NAME as its p(z)/p(x): {', '.join(RECIPES.names())} (the fitted "
                             "ones read the fit of `vaegen expost --density NAME`)")


def add(sub) -> None:
    e = sub.add_parser("evaluate", help="bounds, log-likelihood estimates and diagnostics on a held-out split; writes eval.json",
                       description="Evaluate a trained run with the chosen estimators (`vaegen config --components "
                                   "estimator` lists them). The estimators' flags are the settings of the run's "
                                   "config.eval; those left out keep their values.")
    e.add_argument("--workdir", required=True)
    add_density(e, "evaluate the run")
    e.add_argument("--split", default="test", choices=("test", "validation"))
    e.add_argument("--images", metavar="PATH", help="score your own images instead of a split: .npy, .npz, IDX, or a "
                   "folder of PNGs (uint8 grey levels, floats in [0, 1] or binary); default --out "
                   "WORKDIR/eval_<name>.json")
    e.add_argument("--binarize", choices=images_lib.BINARIZE, default=None,
                   help="--images for a Bernoulli likelihood: threshold (x/255 > 0.5), sample (one Bernoulli draw "
                        "keyed by --seed) or none (the images are binary already)")
    estimators = e.add_argument_group("estimators (config.eval; `vaegen config --components estimator`)")
    _FLAGS[:] = add_settings_flags(estimators, EvalSettings, exclude=EvalSettings.TRAINING_ONLY)
    e.add_argument("--seed", type=non_negative_int, default=0)
    e.add_argument("--max-examples", type=non_negative_int, default=0, help="evaluate the first n examples only")
    e.add_argument("--batch-size", type=positive_int, default=None, help="examples vmapped together per device (memory only)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument("--out", help="JSON output path (default WORKDIR/eval.json; WORKDIR/eval_<name>.json with --images)")
    e.add_argument("--per-example", metavar="PATH.npz",
                   help="also write every metric's per-example values (nats) to this .npz, for paired comparisons")
    e.set_defaults(func=cmd_evaluate)
