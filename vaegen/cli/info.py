"""``vaegen data`` and ``vaegen config``: datasets, presets, resolved configs and the registered components."""

from __future__ import annotations

from vaegen.config import loading as config_lib
from vaegen.data import datasets
from vaegen.errors import ConfigError
from vaegen.registry import describe, registries, registry


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
            if reg.declares("log_px"):     # a recipe: what its log p(x) is and what it needs
                summary += (f" log p(x): {c.trait('log_px').value}; needs: "
                            f"{', '.join(c.trait('needs')) or 'nothing'}.")
            summary, settings = summary.replace("|", r"\|"), settings.replace("|", r"\|")
            out.append(f"| `{c.name}`{alias} | {summary} | {settings} |")
        out.append("")
    return "\n".join(out).rstrip()


def add(sub) -> None:
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
    c.set_defaults(func=cmd_config, accepts_overrides=True)
