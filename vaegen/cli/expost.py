"""``vaegen expost``: make a trained run generative with a fitted recipe (:mod:`vaegen.studies.expost`).

Its flags are the settings of the registered fitted recipes (``--components`` of the GMM,
``--epochs`` of a fit by the trainer, ...): each applies to the recipes that have it, and a flag
for a setting the chosen recipe lacks is one line naming the recipes that have it.  ``--set
KEY=VALUE`` sets any setting, including those of a learned density's own section (``--set layers=8``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib

from vaegen.cli.common import flag_type, key_values, non_negative_int, positive_int
from vaegen.errors import ConfigError
from vaegen.registry import field_type, fields, parse, to_mapping
from vaegen.runs import run as run_lib
from vaegen.runs.recipes import RECIPES
from vaegen.studies import expost

_EXPOST_OWN = ("seed",)
"""Settings set by the command's own flag of the same name (the seed of the fit, the samples and the evaluation)."""


def _fitted() -> list:
    return [c for c in RECIPES if c.trait("fitted")]


def _flag_fields() -> dict[str, tuple[type, dataclasses.Field, list[str]]]:
    """Every top-level setting of a fitted recipe: ``{name: (type, field, [recipes that have it])}``."""
    out: dict[str, tuple] = {}
    for c in _fitted():
        for f in fields(c.settings):
            tp = field_type(c.settings, f.name)
            if dataclasses.is_dataclass(tp) or f.name in _EXPOST_OWN:
                continue
            entry = out.setdefault(f.name, (tp, f, []))
            entry[2].append(c.name)
    return out


def recipe_settings(args: argparse.Namespace, name: str):
    """The settings of recipe ``name`` with the command line's flags and ``--set`` items in place."""
    component = RECIPES.get(name, "density")
    if not component.trait("fitted"):
        raise ConfigError(f"--density {component.name}: that recipe fits nothing; use `vaegen evaluate` or `vaegen sample` "
                          f"with --density {component.name}, or fit one of {', '.join(c.name for c in _fitted())}")
    cls = component.settings
    own = {f.name: f for f in fields(cls)}
    mapping = to_mapping(cls())
    for key, (_, _, having) in _flag_fields().items():
        value = getattr(args, f"recipe.{key}", None)
        if value is None:
            continue
        if key not in own:
            raise ConfigError(f"--{key.replace('_', '-')}: the recipe {component.name!r} has no setting {key!r} (its "
                              f"settings: {', '.join(own)}); the recipes with that setting: {', '.join(having)}")
        mapping[key] = tuple(value) if isinstance(value, list) else value
    if "seed" in own:
        mapping["seed"] = int(args.seed)
    sections = {n: field_type(cls, n) for n in own if dataclasses.is_dataclass(field_type(cls, n))}
    known = [n for n in own if n not in sections] + [f"{s}.{f.name}" for s, tp in sections.items() for f in fields(tp)]
    for key, value in key_values(args.set).items():
        path = key.split(".")
        if path[0] not in own:          # a setting of the recipe's own section (the density's), given bare
            section = next((s for s, tp in sections.items() if path[0] in {f.name for f in fields(tp)}), None)
            if section is not None:
                path = [section, *path]
        if ".".join(path) not in known:
            close = difflib.get_close_matches(path[-1], [k.split(".")[-1] for k in known], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"--set {key}: the recipe {component.name!r} has no setting {key!r} (its settings: "
                              f"{', '.join(known)}){hint}")
        node = mapping
        for p in path[:-1]:
            node = node.setdefault(p, {}) if isinstance(node, dict) else node
        node[path[-1]] = value
    try:
        return parse(cls, mapping, component.name)
    except ConfigError as e:
        raise ConfigError(str(e).replace(f"config.{component.name}.", f"{component.name} setting ")
                          .replace(f"'{component.name}.", "'")) from None


def cmd_expost(args, overrides) -> int:
    component = RECIPES.get(args.density, "density")
    settings = recipe_settings(args, component.name)   # one line for a bad setting, before anything is read
    recipe = component.build(settings)
    run = run_lib.restore(args.workdir)
    recipe.check(run)
    expost.expost(run, recipe, n=args.n, k=args.k, max_examples=args.max_examples, seed=args.seed, refit=args.refit)
    return 0


def add(sub) -> None:
    fitted = [c.name for c in _fitted()]
    x = sub.add_parser("expost", help="make a trained run generative: fit a density (GMM, flow, second-stage VAE, diffusion, "
                                      "a prior over a VQ-VAE's codes) to its codes as p(z)",
                       description="Fits the recipe --density to the run's training codes (or reuses its fit), saves it "
                                   "in WORKDIR/expost/, samples z ~ p(z), x ~ p(x|z) (samples.png) and estimates test "
                                   "log p(x) by importance sampling (eval.json), labelled with what it is.")
    x.add_argument("--workdir", required=True)
    x.add_argument("--density", default="gmm", choices=fitted + sorted(a for c in _fitted() for a in c.aliases),
                   metavar="NAME", help=f"the recipe to fit: {', '.join(fitted)} (`vaegen config --components recipe`)")
    x.add_argument("--n", type=positive_int, default=64, help="samples in the grid")
    x.add_argument("--k", type=non_negative_int, default=100, help="importance samples for log p(x) (0: skip the evaluation)")
    x.add_argument("--max-examples", type=non_negative_int, default=1000, help="test images to evaluate (0 = all)")
    x.add_argument("--seed", type=int, default=0, help="seed of the codes, the fit, the samples and the evaluation")
    x.add_argument("--refit", action="store_true",
                   help="fit anew where a fit with other settings is there (the old fit is kept beside it)")
    settings = x.add_argument_group("settings of the recipes (each applies to the recipes that have it)")
    for name, (tp, f, having) in _flag_fields().items():
        meta = f.metadata or {}
        kwargs = {"dest": f"recipe.{name}", "default": None, "type": flag_type(tp, meta), "metavar": name.upper(),
                  "help": f"{meta.get('doc', '')} ({', '.join(having)})"}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if tp is bool:
            kwargs = {"dest": f"recipe.{name}", "default": None, "action": argparse.BooleanOptionalAction,
                      "help": kwargs["help"]}
        settings.add_argument(f"--{name.replace('_', '-')}", **kwargs)
    x.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any setting of the recipe, including its density's, e.g. --set layers=8 --set kind=coupling "
                        "(repeatable; `vaegen config --components` lists them)")
    x.set_defaults(func=cmd_expost, writes_into_run=lambda args: True)
