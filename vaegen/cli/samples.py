"""``vaegen sample`` and ``vaegen reconstruct``: PNG grids of a run's samples and reconstructions."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from vaegen.cli.common import non_negative_int, positive_int
from vaegen.cli.evaluate import add_density
from vaegen.runs import loading
from vaegen.runs import run as run_lib
from vaegen.runs.recipes import as_trained
from vaegen.studies import figures
from vaegen.train import workdir as workdir_lib


def cmd_sample(args, overrides) -> int:
    default_name = f"samples_{args.density}.png" if args.density else "samples.png"
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / default_name
    workdir_lib.check_writable(out, option="--out", default_name=default_name)  # before the work
    run = loading.load(args.workdir, density=args.density)
    recipe = as_trained(run)
    _, display = recipe.sample(run, jax.random.key(args.seed), args.n)
    what = recipe.samples_from(run.spec)
    figures.save_grid(out, np.asarray(display), title=f"{args.n} samples, drawn from {what}")
    print(f"wrote {out}")
    return 0


def cmd_reconstruct(args, overrides) -> int:
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "reconstructions.png"
    workdir_lib.check_writable(out, option="--out", default_name="reconstructions.png")  # before the work
    run = run_lib.restore(args.workdir)
    x = run.split(args.split, max_examples=args.n)
    z = run.encode(x).mean()
    recon = np.asarray(run.decode(z).mean())
    ncols = min(8, args.n)
    figures.save_grid(out, figures.interleave_rows(x, recon, ncols), ncols=ncols,
                      title="data (odd rows) and E[x | z = E_q[z|x]] (even rows)")
    print(f"wrote {out}")
    return 0


def add(sub) -> None:
    s = sub.add_parser("sample", help="PNG grid of samples: z ~ p(z), x ~ p(x|z) (MADE: pixel by pixel)")
    s.add_argument("--workdir", required=True)
    s.add_argument("--n", type=positive_int, default=64)
    s.add_argument("--seed", type=non_negative_int, default=0)
    add_density(s, "sample the run")
    s.add_argument("--out", help="PNG path (default WORKDIR/samples.png, WORKDIR/samples_<density>.png with --density)")
    s.set_defaults(func=cmd_sample)

    r = sub.add_parser("reconstruct", help="PNG grid of held-out images and their reconstructions")
    r.add_argument("--workdir", required=True)
    r.add_argument("--n", type=positive_int, default=32)
    r.add_argument("--split", default="test", choices=("test", "validation"))
    r.add_argument("--out", help="PNG path (default WORKDIR/reconstructions.png)")
    r.set_defaults(func=cmd_reconstruct)
