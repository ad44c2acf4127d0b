"""``vaegen gaps``: the inference gap split into approximation and amortization gaps (Cremer et al.)."""

from __future__ import annotations

import pathlib

from vaegen.cli.common import non_negative_int, positive_int
from vaegen.errors import InferenceError, WorkdirError
from vaegen.inference import families as families_lib
from vaegen.inference.svi import SVISettings
from vaegen.runs import run as run_lib
from vaegen.studies import gaps as gaps_lib
from vaegen.train import workdir as workdir_lib


def cmd_gaps(args, overrides) -> int:
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "gaps"
    if out.exists() and not out.is_dir():
        raise WorkdirError(f"cannot write the tables into {out}: it is a file, not a directory; pass --out a "
                           "directory")
    for name in ("gaps.md", "gaps.csv", "gaps.json", "gaps_per_example.npz"):
        workdir_lib.check_writable(out / name, option="--out")
    run = run_lib.restore(args.workdir, epoch=args.epoch)
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
    kept: list[pathlib.Path] = []
    paths = gaps_lib.write_tables(report, out, kept=kept)
    print(gaps_lib.markdown_table(report.rows))
    print(f"wrote {', '.join(str(p) for p in paths.values())}"
          + (f"; the tables they replaced are kept as {', '.join(str(p) for p in kept)}" if kept else ""))
    return 0


def add(sub) -> None:
    g = sub.add_parser("gaps", help="the inference gap split into approximation and amortization gaps (Cremer et al.)",
                       description="Per example: log p(x) (importance sampling), L[q*_F] (per-example SVI in each "
                                   "family F) and L[q] (the encoder); writes gaps.md, gaps.csv, gaps.json. Defaults "
                                   "come from the run's config.gaps.")
    g.add_argument("--workdir", required=True)
    g.add_argument("--family", help=f"comma-separated variational families: {', '.join(families_lib.family_names())} "
                                    "(default config.gaps.families)")
    g.add_argument("--split", help="comma-separated splits: test, train, validation (default test and a train subset)")
    g.add_argument("--steps", type=non_negative_int, help="SVI steps per example for q*")
    g.add_argument("--lr", type=float, help="Adam learning rate of the SVI steps (cosine-decayed)")
    g.add_argument("--samples-per-step", type=positive_int, help="z samples per SVI step")
    g.add_argument("--init", choices=("amortized", "prior"), help="start q* from the encoder's q or from N(0, I)")
    g.add_argument("--elbo-samples", type=positive_int, help="z samples for each reported ELBO")
    g.add_argument("--k", type=positive_int, help="importance samples for log p(x)")
    g.add_argument("--test-examples", type=non_negative_int, help="first n test examples (0 = all)")
    g.add_argument("--train-examples", type=non_negative_int, help="size of the training subset (0 = no training split)")
    g.add_argument("--chunk-size", type=positive_int, help="examples per vmapped chunk (memory only)")
    g.add_argument("--epoch", type=positive_int, help="checkpoint epoch (default the latest)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", help="output directory (default WORKDIR/gaps)")
    g.set_defaults(func=cmd_gaps, writes_into_run=_writes_into_run)


def _writes_into_run(args) -> bool:
    """Without --out, gaps writes into the run (a read-only workdir: say that --out writes elsewhere)."""
    if args.out:
        return False
    workdir_lib.check_writable(pathlib.Path(args.workdir) / "gaps" / "gaps.md", option="--out")
    return True
