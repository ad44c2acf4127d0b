"""``vaegen demo``: the main job (a VAE and an AE with identical networks, evaluated, with figures)."""

from __future__ import annotations

from vaegen.cli.common import positive_int
from vaegen.studies import demo


def cmd_demo(args, overrides) -> int:
    demo.run(args.workdir, overrides=overrides, epochs=args.epochs, k=args.k)
    return 0


def add(sub) -> None:
    m = sub.add_parser("demo", help="the main job: VAE and AE with identical nets on Fashion-MNIST, evaluated, with figures and a summary")
    m.add_argument("--workdir", default="runs/demo")
    m.add_argument("--epochs", type=positive_int, default=None, help="epochs for each model (default: the presets')")
    m.add_argument("--k", type=positive_int, default=1000, help="importance samples for the VAE's test log p(x)")
    m.set_defaults(func=cmd_demo, accepts_overrides=True)
