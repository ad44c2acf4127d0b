"""Loading, overriding and printing configurations (the loose side of the boundary).

A configuration is an ``ml_collections.ConfigDict`` built by a preset's ``get_config(arg)`` (a
module in :mod:`vaegen.config.presets`, or any Python file), locked so that only existing keys can be
set, and checked by converting it into the typed :class:`vaegen.spec.run.RunSpec`.
Overrides ``config.a.b=value`` are parsed as Python *literals* (``ast.literal_eval``, never
evaluated as code) and must match the key's type.

Component sections.  A section that chooses a component (``model.prior``,
``inference.posterior``, ``objective``, a trunk, ``model.kind``, ...) holds the component's
``name`` and exactly its settings.  Choosing another component
(``--config.model.prior.name=vampprior``, or shorter ``--config.model.prior=vampprior``) gives
the section that component's settings with their defaults; overrides that choose components are
applied before the others, so ``--config.model.prior.components=50
--config.model.prior=vampprior`` works in either order.  A setting the chosen component does not
have is an error that names the components that have it.

A config file may import modules that sit next to it (its directory is on ``sys.path`` while it
runs): that is how a researcher's own component, registered in a module of their own, is chosen
by name from their config (docs/own-component.md).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import json
import pathlib
import pkgutil
import sys
from typing import Any, Iterable, Iterator, Mapping

import ml_collections

from vaegen.config import presets as presets_pkg
from vaegen.config import schema
from vaegen.errors import ConfigError
from vaegen.registry import field_type, fields, parse_selected, registry, type_phrase
from vaegen.train import workdir as workdir_lib

RESUMABLE_KEYS = workdir_lib.RESUMABLE_KEYS


def presets() -> list[str]:
    """Names of the presets shipped in :mod:`vaegen.config.presets`."""
    return sorted(m.name for m in pkgutil.iter_modules(presets_pkg.__path__) if m.name != "default")


@contextlib.contextmanager
def _importable_from(directory: pathlib.Path) -> Iterator[None]:
    """While the block runs, modules in ``directory`` can be imported (a config file's neighbours)."""
    entry = str(directory.resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


@contextlib.contextmanager
def _no_bytecode() -> Iterator[None]:
    """While the block runs, Python writes no ``__pycache__``: loading a config file (and the
    modules beside it that it imports) writes nothing next to it, even when it fails."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads a preset or config file and applies overrides.

    Args:
      spec: a preset name (``vae_mlp_fmnist``), or a path to a Python file defining
        ``get_config(arg)``; either may carry an argument after a colon (``tiny:ae``).
      overrides: strings ``"a.b=value"`` (the ``--config.`` prefix optional).
    Returns:
      The locked, validated ConfigDict (:func:`vaegen.config.schema.to_spec` turns it into the
      typed run spec).
    """
    name, _, arg = spec.partition(":")
    arg = arg or None
    if name.endswith(".py") or "/" in name:
        path = pathlib.Path(name)
        if not path.is_file():
            raise ConfigError(f"config file {name!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"_vaegen_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        with _importable_from(path.parent), _no_bytecode():
            try:
                module_spec.loader.exec_module(module)
            except ConfigError:
                raise
            except Exception as e:  # a user's file: any error of its own, on one line
                raise ConfigError(f"config file {name!r} failed to load: {type(e).__name__}: {e}") from None
    else:
        if name not in presets() and name != "default":
            raise ConfigError(
                f"unknown config preset {name!r}; presets: {', '.join(presets())} "
                "(or give a path to a config .py file)"
            )
        module = importlib.import_module(f"vaegen.config.presets.{name}")
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config {spec!r} defines no get_config()")
    config = _get_config(module.get_config, spec, name, arg, user_file=module.__name__.startswith("_vaegen_config_"))
    config = normalize(config)
    apply_overrides(config, overrides)
    validate(config)
    return config


def _required_positional(fn: Any) -> int:
    """How many positional parameters ``fn`` requires (-1 if its signature cannot be read)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return -1
    return sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               and p.default is p.empty)


def _takes_an_argument(fn: Any) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters)


def _get_config(get_config: Any, spec: str, name: str, arg: str | None, *, user_file: bool) -> Any:
    """``get_config()`` called as ml_collections' ``config_flags`` calls it: with the argument
    after the colon (``file.py:arg``) if there is one, else with none.  A ``get_config(arg)``
    whose parameter has no default (the form vaegen's loader once required, always passing one) is
    given ``None``.  Whatever a user's file raises becomes one line naming the file and the error."""
    where = f"config file {name!r}" if user_file else f"config {spec!r}"
    if arg is not None and not _takes_an_argument(get_config):
        raise ConfigError(f"{where} was given the argument {arg!r} (after the colon), but its get_config() takes "
                          f"none: drop ':{arg}', or give get_config a parameter")
    try:
        if arg is not None:
            config = get_config(arg)
        elif _required_positional(get_config) == 1:
            config = get_config(None)
        else:
            config = get_config()
    except ConfigError:
        raise
    except Exception as e:  # a user's file: any error of its own, on one line
        if not (user_file or isinstance(e, ValueError)):
            raise
        text = str(e)
        if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) and (
                e.args[0].startswith("'") or any(c.isspace() for c in e.args[0])):
            text = e.args[0]  # a message of its own (ml_collections'), not a bare key: not its repr
        message = " ".join(text.split())  # one line
        if not user_file:  # a preset refusing its argument
            raise ConfigError(f"{where}: {message}") from None
        call = "get_config()" if arg is None else f"get_config({arg!r})"
        raise ConfigError(f"{where}: {call} raised {type(e).__name__}" + (f": {message}" if message else "")) from None
    if not isinstance(config, (ml_collections.ConfigDict, Mapping)):
        raise ConfigError(f"{where}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict "
                          "(or a mapping)")
    return config


def normalize(config: ml_collections.ConfigDict | Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A run config with every component section complete (missing settings at their defaults)
    and the current types (tuples), locked: what a preset's ``get_config`` returns, made whole."""
    return schema.to_config(schema.to_spec(config))


def component(kind: str, name: str, **settings: Any) -> ml_collections.ConfigDict:
    """A component section ``{name, settings}`` with every setting (defaults, ``settings``
    changed; nested component sections as ConfigDicts or mappings): for presets, e.g.
    ``c.model.prior = component("prior", "vampprior", components=50)``."""
    plain = {k: v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v for k, v in settings.items()}
    return ml_collections.ConfigDict(parse_selected(kind, {"name": name, **plain}, kind).to_mapping())


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every key and value and how the components fit together (by converting the config
    into the typed run spec); raises :class:`vaegen.errors.ConfigError` naming the key."""
    schema.to_spec(config)


def _parse_value(text: str, current: Any, key: str) -> Any:
    if isinstance(current, str):
        # Strings are taken verbatim (quotes optional).
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, bool) and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ConfigError(
            f"config.{key}: cannot parse {text!r} as {type_phrase(type(current))} literal"
        ) from None
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, (tuple, list)):
        if isinstance(value, (tuple, list)):
            return tuple(value)
        if isinstance(value, (int, float)):
            return (value,)
    raise ConfigError(
        f"config.{key} expects {type_phrase(type(current))} (currently {current!r}), got {text!r}"
    )


def parse_seeds(text: str, flag: str = "--train-seeds") -> list[int]:
    """Training seeds of replicate runs from ``"0,1,2"``: non-negative integers, in order, each once.

    Raises ``ValueError`` naming ``flag`` for anything else (the study runners turn it into their
    one-line usage error)."""
    try:
        seeds = list(dict.fromkeys(int(x) for x in text.split(",")))
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise ValueError(f"{flag} must be >= 0; got {text!r}")
    return seeds


def seeded_run_name(name: str, seed: int, own_seed: int) -> str:
    """The workdir name of a replicate run: ``name`` for the config's own seed, ``name.seed<s>``
    for another (the study runners' layout, so an existing run is reused as one replicate)."""
    return name if int(seed) == int(own_seed) else f"{name}.seed{int(seed)}"


# --- overrides -------------------------------------------------------------------------------------

def _slot_at(config: ml_collections.ConfigDict, path: list[str], spec_type: type = schema.RunSpec) -> str | None:
    """The registry kind of the component section at ``path`` of a config of ``spec_type`` (a run
    config by default), or None (walking the schema and the components the config has chosen)."""
    cls: Any = spec_type
    node: Any = config
    kind = None
    for part in path:
        field = next((f for f in fields(cls) if f.name == part), None) if cls is not None else None
        if field is None or not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return None
        node = node[part]
        if field.metadata.get("slot"):
            kind = field.metadata["slot"]
            name = node.get("name") if isinstance(node, ml_collections.ConfigDict) else None
            reg = registry(kind)
            cls = reg.get(name).settings if name in reg else None
        else:
            kind = None
            tp = field_type(cls, part)
            cls = tp if dataclasses.is_dataclass(tp) else None
    return kind


def check_distinct(overrides: Iterable[str]) -> None:
    """:class:`vaegen.errors.ConfigError` if two overrides set the same key (``a.b=1 a.b=2``, or
    ``model.prior=x model.prior.name=y``): which one was meant cannot be guessed, so neither wins."""
    seen: dict[str, str] = {}
    for o in overrides:
        key = _split(o)[0].strip()
        canonical = key.removesuffix(".name")
        if canonical in seen:
            raise ConfigError(f"config key {key!r} is overridden twice ({seen[canonical]!r} and {o!r}); "
                              "give each key once")
        seen[canonical] = o


def _split(item: str) -> tuple[str, str]:
    item = item.removeprefix("--").removeprefix("config.")
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like --config.key=value")
    key, text = item.split("=", 1)
    return key, text


def _selector(config: ml_collections.ConfigDict, key: str, spec_type: type) -> list[str] | None:
    """The path of the component section an override ``key`` chooses (``a.b.name`` or ``a.b``
    itself), or None if it sets something else."""
    path = key.split(".")
    if path[-1] == "name" and _slot_at(config, path[:-1], spec_type):
        return path[:-1]
    if _slot_at(config, path, spec_type):
        return path
    return None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str], *,
                    spec_type: type = schema.RunSpec) -> None:
    """Applies ``"a.b=value"`` overrides in place; unknown keys and wrong types are errors.
    Overrides that choose a component are applied first (see the module docstring).  ``config`` is
    the loose form of a ``spec_type`` settings object (a run's RunSpec by default; a study's settings
    too), whose schema says which sections are components."""
    items = [_split(o) for o in overrides]

    def depth(item):  # outer sections first (model.kind before model.kind.top_decoder)
        key = item[0]
        return key.count(".") - (1 if key.endswith(".name") else 0)

    chosen = set()
    for i, (key, text) in sorted(enumerate(items), key=lambda e: depth(e[1])):
        path = _selector(config, key, spec_type)
        if path is not None:
            _choose(config, path, text.strip().strip("'\""), spec_type)
            chosen.add(i)
    for i, (key, text) in enumerate(items):
        if i not in chosen:
            _set(config, key, text, spec_type)


def _node(config: ml_collections.ConfigDict, path: list[str]) -> ml_collections.ConfigDict:
    node = config
    for p in path:
        node = node[p]
    return node


def _choose(config: ml_collections.ConfigDict, path: list[str], name: str, spec_type: type) -> None:
    """Chooses component ``name`` for the section at ``path``: its settings at their defaults
    (nothing changes if it is chosen already)."""
    kind = _slot_at(config, path, spec_type)
    reg = registry(kind)
    where = ".".join(path)
    component_ = reg.get(name, f"{where}.name")
    parent, leaf = _node(config, path[:-1]), path[-1]
    if parent[leaf].get("name") == component_.name:
        return
    section = ml_collections.ConfigDict(reg.default_mapping(component_.name))
    with parent.unlocked():
        parent[leaf] = section
    config.lock()


def _set(config: ml_collections.ConfigDict, key: str, text: str, spec_type: type) -> None:
    *parents, leaf = key.split(".")
    node = config
    for i, p in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or p not in node:
            raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r} (in override {key}={text})")
        node = node[p]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(_unknown_key_message(config, key, spec_type))
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config.{key} is a section; set one of its keys: {sorted(current.keys())}")
    value = _parse_value(text, current, key)
    with node.unlocked():
        node[leaf] = value


def _unknown_key_message(config: ml_collections.ConfigDict, key: str, spec_type: type) -> str:
    *parents, leaf = key.split(".")
    kind = _slot_at(config, parents, spec_type) if parents else None
    if kind is not None:
        section = _node(config, parents)
        reg = registry(kind)
        others = [n for n in reg.with_setting(leaf) if n != section.get("name")]
        takes = ", ".join(k for k in section.keys() if k != "name") or "none"
        hint = (f"; the {kind}s with that setting: {', '.join(others)} (choose one first: "
                f"--config.{'.'.join(parents)}=NAME)" if others else "")
        close = difflib.get_close_matches(leaf, [k for k in section.keys() if k != "name"], n=3)
        if close and not others:
            hint = f"; did you mean {', '.join('.'.join(parents + [c]) for c in close)}?"
        return (f"config.{key}: the {kind} {section.get('name')!r} has no setting {leaf!r} "
                f"(its settings: {takes}){hint}")
    keys = flat_keys(config)
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown config key {key!r}{hint}"


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            out += flat_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


# --- printing and storing ----------------------------------------------------------------------------

def flatten(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf."""
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    return workdir_lib.flatten(d)


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
    """A locked config from a ``config.json`` (a 0.1 config is translated, keys added since take
    their defaults)."""
    try:
        stored = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"not a vaegen config (invalid JSON: {e})") from None
    return normalize(workdir_lib.current_shape(stored))


def differences(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict, *,
                ignore: Iterable[str] = RESUMABLE_KEYS) -> list[str]:
    """Human-readable differences ``key: a -> b`` between two configs, skipping ``ignore``
    (exact keys, or prefixes ending in '.')."""
    return workdir_lib.differences(a.to_dict(), b.to_dict(), ignore=ignore)
