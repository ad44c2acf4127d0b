"""Components by name, and typed settings.

A **component** is a part of a run that a config chooses by name: a prior p(z), a likelihood
p(x | z), a posterior q(z | x), a network trunk, an objective, a model kind, an estimator of
log p(x).  Each is declared **once**, where it is implemented::

    @dataclasses.dataclass(frozen=True)
    class VampPriorSettings(Settings):
        components: int = setting(500, "K pseudo-inputs", gt=0)
        init: str = setting("random", "random: u_k = sigmoid(w_k), w_k ~ N(init_mean, init_std) | data",
                            choices=("random", "data"))

    class VampPrior(nn.Module):
        latent_dim: int                       # what it is built for (the build context)
        event_shape: tuple[int, ...]
        settings: VampPriorSettings           # its settings: the only place they are written

    @PRIORS.register("vampprior", settings=VampPriorSettings, traits={"needs_posterior": True})
    def vampprior(settings, *, latent_dim, event_shape):
        '''p(z) = 1/K sum_k q(z | u_k): K learned pseudo-inputs through the encoder.'''
        return VampPrior(latent_dim=latent_dim, event_shape=event_shape, settings=settings)

and everything else is derived from that declaration: the config's defaults, its validation
(one line naming the key, the value and what is allowed), ``vaegen config --components``,
"did you mean" on a misspelt name, the command line's choices and the docs' component tables.  A module of
the user's own registers a component the same way and is then chosen by name like any other.

**Settings** are frozen dataclasses whose fields are declared with :func:`setting` (a default,
one line of documentation, and the valid range) or :func:`slot` (a nested component chosen by
name, e.g. the trunk of a network).  :func:`parse` turns a loose mapping (a config section) into
a settings object, checking every key, type and value; :func:`to_mapping` is its inverse.
Settings of the run's other sections (data, optimiser, trainer, evaluation) are declared the
same way, so one validator serves the whole config.

A component's build function receives its settings and the context it is built in (listed for
each registry below) and returns an object that holds the settings object itself, never copies of
its fields; ``traits`` are facts other parts check against (a point-mass posterior, a likelihood's
support), each declared once by its registry (:class:`Trait`: type, default, meaning), so a
component registered with an undeclared trait is refused and a reader never chooses a default;
``check(settings, spec)`` validates how it combines with the rest of the run (``spec`` is the whole
typed :class:`vaegen.spec.run.RunSpec`) and raises :class:`vaegen.errors.ConfigError`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import inspect
import math
import types
import typing
from typing import Any, Callable, Iterable, Mapping

from vaegen.errors import ConfigError


_CONFIG_WHERE: contextvars.ContextVar[str | None] = contextvars.ContextVar("vaegen_config_where", default=None)


# --- settings --------------------------------------------------------------------------------------

def setting(default: Any, doc: str = "", *, gt: float | None = None, ge: float | None = None,
            lt: float | None = None, le: float | None = None, choices: Iterable[str] | None = None,
            items_gt: float | None = None, items_ge: float | None = None, nonempty: bool = False,
            flags: Iterable[str] = ()) -> Any:
    """A field of a settings dataclass: its default, one line of documentation, and its valid values.

    Args:
      default: the value when a config does not set it.
      doc: one line of documentation.
      gt: a number must be ``> gt``.
      ge: a number must be ``>= ge``.
      lt: a number must be ``< lt``.
      le: a number must be ``<= le``.
      choices: the strings allowed.
      items_gt: every entry of a tuple must be ``> items_gt``.
      items_ge: every entry of a tuple must be ``>= items_ge``.
      nonempty: a tuple needs at least one entry.
      flags: short command-line names of the setting where a command derives its flags from the
        settings (``("--k",)`` beside ``--num-samples``).
    """
    meta = {"doc": doc, "gt": gt, "ge": ge, "lt": lt, "le": le,
            "choices": tuple(choices) if choices is not None else None,
            "items_gt": items_gt, "items_ge": items_ge, "nonempty": nonempty, "flags": tuple(flags)}
    return dataclasses.field(default=default, metadata=meta)


def slot(kind: str, name: str, doc: str = "", *, accepts: Callable[["Component"], bool] | None = None,
         role: str = "", **settings: Any) -> Any:
    """A field holding a nested component chosen by name (a :class:`Selected`), e.g. a trunk.

    Args:
      kind: the registry the component comes from (``"network"``).
      name: the default component; ``settings`` override its default settings.
      accepts: which components may fill this slot (e.g. trunks that read images); others are
        refused with the list of those that may.
      role: what the slot is, for messages ("p(x | z)'s trunk").
    """
    def default() -> Selected:
        return registry(kind).select(name, **settings)

    return dataclasses.field(default_factory=default,
                             metadata={"doc": doc, "slot": kind, "accepts": accepts, "role": role})


class Settings:
    """Base class of settings dataclasses: validated when constructed.

    Every value is checked against its field's declaration and then by the class's own
    :meth:`validate`.  Constructed from Python, a bad value is a ConfigError naming
    ``<Class>.<field>``; parsed from a config section (:func:`parse`), one naming the config key
    ``config.<section>.<field>``.
    """

    def __post_init__(self):
        where = _CONFIG_WHERE.get()
        check(self, type(self).__name__ if where is None else where, config=where is not None)

    def validate(self, key: Callable[[str], str]) -> None:
        """Checks that involve several fields; ``key(field)`` is the field's name in messages."""


@dataclasses.dataclass(frozen=True)
class NoSettings(Settings):
    """A component without settings."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, name: str) -> Any:
    """The (resolved) type annotation of field ``name`` of a settings dataclass."""
    return _hints(cls).get(name)


def fields(cls: type) -> list[dataclasses.Field]:
    """The settings fields of a settings dataclass (in order)."""
    return [f for f in dataclasses.fields(cls) if f.init]


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return f"tuple of {_type_name(args[0])}" if args else "tuple"
    return getattr(tp, "__name__", str(tp))


_PHRASES = {bool: ("a boolean", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
            str: ("a string", "strings")}


def type_phrase(tp: Any, *, plural: bool = False) -> str:
    """A type as messages say it: ``int`` -> "an integer", ``tuple[float, ...]`` -> "a tuple of
    numbers", ``bool`` -> "a boolean" (``plural``: "integers", ...)."""
    if typing.get_origin(tp) is tuple or tp is tuple:
        args = typing.get_args(tp)
        phrase = f"a tuple of {type_phrase(args[0], plural=True)}" if args and args[0] is not Any else "a tuple"
        return phrase.replace("a tuple", "tuples", 1) if plural else phrase
    if tp in _PHRASES:
        return _PHRASES[tp][plural]
    name = getattr(tp, "__name__", str(tp))
    return f"{name} values" if plural else f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (ints are accepted for floats, lists for tuples); ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{key} expects {type_phrase(tp)}, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, key) for v in value) if item is not Any else tuple(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"{key}={value!r} must be a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{key} expects {type_phrase(tp)}, got {value!r}")


def _interval(meta: Mapping[str, Any]) -> str | None:
    lo = ("(", meta["gt"]) if meta["gt"] is not None else ("[", meta["ge"]) if meta["ge"] is not None else None
    hi = (")", meta["lt"]) if meta["lt"] is not None else ("]", meta["le"]) if meta["le"] is not None else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {lo[1]:g}"
    if hi:
        return f"{'<' if hi[0] == ')' else '<='} {hi[1]:g}"
    return None


def _in_range(v: float, meta: Mapping[str, Any]) -> bool:
    return not ((meta["gt"] is not None and not v > meta["gt"]) or (meta["ge"] is not None and not v >= meta["ge"])
                or (meta["lt"] is not None and not v < meta["lt"]) or (meta["le"] is not None and not v <= meta["le"]))


def out_of_range(value: Any, meta: Mapping[str, Any]) -> str | None:
    """Why ``value`` is not allowed by a setting's declaration ``meta`` (``"must be > 0"``), or None."""
    if meta.get("choices") is not None and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rng = _interval(meta)
        if rng and not _in_range(value, meta):
            return f"must be {rng}"
    return None


def _check_value(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(meta['choices'])}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rng = _interval(meta)
        if rng and not _in_range(value, meta):
            raise ConfigError(f"{key}={value!r} must be {rng}")
    if isinstance(value, tuple):
        if meta.get("nonempty") and not value:
            raise ConfigError(f"{key} needs at least one entry, got ()")
        item_meta = {"gt": meta.get("items_gt"), "ge": meta.get("items_ge"), "lt": None, "le": None}
        rng = _interval(item_meta)
        if rng and any(not _in_range(v, item_meta) for v in value if isinstance(v, (int, float))):
            raise ConfigError(f"{key}={value!r}: every entry must be {rng}")


def key_function(where: str, *, config: bool = True) -> Callable[[str], str]:
    """How a field is named in messages: ``config.<where>.<field>`` for a config section,
    ``<where>.<field>`` for a Python object (``where`` its class name)."""
    if config:
        return lambda name: f"config.{where}.{name}" if where else f"config.{name}"
    return lambda name: f"{where}.{name}"


def check(obj: Any, where: str, *, config: bool = True) -> None:
    """Checks every field of the settings object ``obj`` against its declaration, then its
    :meth:`Settings.validate` (see :func:`key_function` for how keys are named)."""
    key = key_function(where, config=config)
    for f in fields(type(obj)):
        value = getattr(obj, f.name)
        if f.metadata and not isinstance(value, Selected) and not dataclasses.is_dataclass(value):
            _check_value(value, f.metadata, key(f.name))
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(key)


# --- components ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Trait:
    """A fact a component declares about itself for other parts to check: what it *is* or *can*,
    never which component it is (a VampPrior asks for a posterior with ``batched_density``, not for
    ``diagonal_gaussian``).  Each registry declares its traits once: a component registered with an
    undeclared trait, or with a value of the wrong type, is refused; a component that does not
    give a trait has its default.

    Attributes:
      name: the key components give it under (``register(..., traits={name: value})``).
      type: the type (or types) of its values; ``None`` is allowed when the default is ``None``.
      default: its value for a component that does not give it.
      doc: one line: what it means.
      choices: the values a string trait may take.
    """

    name: str
    type: type | tuple[type, ...]
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None

    def check(self, value: Any, where: str) -> None:
        """Raises ConfigError unless ``value`` is a value of this trait."""
        if value is None and self.default is None:
            return
        kinds = self.type if isinstance(self.type, tuple) else (self.type,)
        wrong_type = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        if wrong_type:
            names = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
            raise ConfigError(f"{where}: trait {self.name!r} takes a {names}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}: trait {self.name!r}={value!r} is not one of {', '.join(self.choices)}")

    @property
    def type_name(self) -> str:
        """Its values, for listings: the choices of a string trait, else the type's name."""
        if self.choices:
            return " | ".join(self.choices)
        kinds = self.type if isinstance(self.type, tuple) else (self.type,)
        return " or ".join("function" if k is Callable else getattr(k, "__name__", str(k)) for k in kinds)


@dataclasses.dataclass(frozen=True)
class Component:
    """One registered component.

    Attributes:
      kind: the registry's kind (``"prior"``).
      name: the name a config chooses it by.
      settings: its frozen settings dataclass (:class:`NoSettings` if it has none).
      build: ``build(settings, **context)``: the object it is (a Flax module, an objective, ...).
      summary: one line saying what it is, in the paper's notation (the build function's
        docstring's first line unless given).
      aliases: other names accepted for it.
      traits: facts that other parts check (e.g. ``deterministic``, ``support``), each declared by
        its registry (:class:`Trait`); read them with :meth:`trait`.
      check: ``check(settings, spec)``: how it combines with the rest of a run.
      module: the module that registered it; ``file``: its source file.
    """

    kind: str
    name: str
    settings: type
    build: Callable[..., Any]
    summary: str = ""
    aliases: tuple[str, ...] = ()
    traits: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check: Callable[[Any, Any], None] | None = None
    module: str = ""
    file: str = ""

    def trait(self, key: str) -> Any:
        """The value of trait ``key``: the component's own, else the default its registry declares
        (:class:`Trait`); an undeclared trait is a ConfigError."""
        declared = registry(self.kind).declared_trait(key)
        return self.traits.get(key, declared.default)

    @property
    def builtin(self) -> bool:
        """Whether vaegen itself registered it (a user's component is recorded with its runs)."""
        return self.module == "vaegen" or self.module.startswith("vaegen.")


@dataclasses.dataclass(frozen=True)
class Selected:
    """A component chosen by name, with its settings: what a config section becomes.

    ``selected.component`` is the registered :class:`Component`; ``selected.build(**context)``
    builds it; ``selected.settings`` is its typed settings object.
    """

    kind: str
    name: str
    settings: Any

    @property
    def component(self) -> Component:
        return registry(self.kind).get(self.name)

    def build(self, **context: Any) -> Any:
        return self.component.build(self.settings, **context)

    def trait(self, key: str) -> Any:
        return self.component.trait(key)

    def to_mapping(self) -> dict[str, Any]:
        """``{"name": name, **settings}`` (nested components as mappings too)."""
        return {"name": self.name, **to_mapping(self.settings)}


class Registry:
    """The components of one kind, by name.

    Args:
      kind: ``prior``, ``likelihood``, ...
      title: how the docs and ``vaegen config --components`` head its table ("p(z)").
      context: the keyword arguments its build functions receive (documentation).
      traits: the traits its components may declare (:class:`Trait`), each with its type,
        default and meaning.
    """

    def __init__(self, kind: str, title: str, context: str = "", traits: Iterable[Trait] = ()):
        self.kind, self.title, self.context = kind, title, context
        self._components: dict[str, Component] = {}
        self._aliases: dict[str, str] = {}
        self._traits: dict[str, Trait] = {}
        for trait in traits:
            self.declare_trait(trait)
        _REGISTRIES[kind] = self

    def declare_trait(self, trait: Trait) -> None:
        """Declares a trait the components of this registry may give (a module of your own can
        declare a new one before registering components that use it)."""
        previous = self._traits.get(trait.name)
        if previous is not None and previous != trait:
            raise ConfigError(f"the {self.kind} trait {trait.name!r} is declared twice, differently")
        if trait.default is not None:
            trait.check(trait.default, f"the {self.kind} trait {trait.name!r}'s default")
        self._traits[trait.name] = trait

    @property
    def traits(self) -> list[Trait]:
        """The declared traits, in declaration order."""
        return list(self._traits.values())

    def declares(self, name: str) -> bool:
        """Whether trait ``name`` is declared for this registry's components."""
        return name in self._traits

    def declared_trait(self, name: str) -> Trait:
        """The declaration of trait ``name``; an undeclared trait is a ConfigError naming the
        declared ones."""
        try:
            return self._traits[name]
        except KeyError:
            declared = ", ".join(self._traits) or "none"
            raise ConfigError(f"{name!r} is not a declared {self.kind} trait (declared: {declared})") from None

    def register(self, name: str, *, settings: type = NoSettings, aliases: Iterable[str] = (),
                 traits: Mapping[str, Any] | None = None, check: Callable[[Any, Any], None] | None = None,
                 summary: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``build`` under ``name`` (see :class:`Component`)."""

        def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
            doc = inspect.getdoc(build) or ""
            self.add(Component(kind=self.kind, name=name, settings=settings, build=build,
                               summary=summary if summary is not None else doc.split("\n\n")[0].replace("\n", " "),
                               aliases=tuple(aliases), traits=types.MappingProxyType(dict(traits or {})),
                               check=check, module=getattr(build, "__module__", "") or "",
                               file=inspect.getsourcefile(build) or ""))
            return build

        return decorate

    def add(self, component: Component) -> None:
        """Registers ``component``.  Registering the same name again from the same module (a
        module imported twice) replaces it; from another module is an error."""
        if not dataclasses.is_dataclass(component.settings) or not issubclass(component.settings, Settings):
            raise TypeError(f"{self.kind} {component.name!r}: settings must be a frozen dataclass derived from "
                            "vaegen.registry.Settings")
        for f in fields(component.settings):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TypeError(f"{self.kind} {component.name!r}: setting {f.name!r} has no default")
        for key, value in component.traits.items():
            if key not in self._traits:
                declared = ", ".join(self._traits) or "none"
                raise ConfigError(f"the {self.kind} {component.name!r} is registered with trait {key!r}, which is not "
                                  f"a declared {self.kind} trait (declared: {declared})")
            self._traits[key].check(value, f"the {self.kind} {component.name!r}")
        previous = self._components.get(component.name)
        if previous is not None and previous.module != component.module:
            raise ConfigError(f"the {self.kind} {component.name!r} is registered twice: by {previous.module} and by "
                              f"{component.module}; give one of them another name")
        for alias in (component.name, *component.aliases):
            owner = self._aliases.get(alias)
            if owner is not None and owner != component.name:
                raise ConfigError(f"the {self.kind} name {alias!r} is taken by {owner!r}")
        self._components[component.name] = component
        for alias in component.aliases:
            self._aliases[alias] = component.name

    def names(self) -> list[str]:
        return sorted(self._components)

    def __contains__(self, name: str) -> bool:
        return name in self._components or name in self._aliases

    def __iter__(self):
        return iter(self._components[n] for n in self.names())

    def canonical(self, name: str) -> str:
        """The registered name of ``name`` (itself or the component it is an alias of)."""
        return self._aliases.get(name, name)

    def get(self, name: str, where: str = "") -> Component:
        """The component ``name`` (or an alias); an unknown name is a ConfigError with the
        registered names and the closest ones."""
        name = self.canonical(name)
        if name in self._components:
            return self._components[name]
        known = self.names() + sorted(self._aliases)
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        at = f"config.{where}={name!r}" if where else repr(name)
        raise ConfigError(f"{at} is not a registered {self.kind} (registered: {', '.join(self.names())}){hint}")

    def select(self, name: str, /, **settings: Any) -> Selected:
        """The component ``name`` with its settings (defaults, with ``settings`` changed): the
        typed form of a config section, for the Python API."""
        component = self.get(name)
        token = _CONFIG_WHERE.set(None)  # messages name the settings class, not a config key
        try:
            obj = component.settings(**settings)
        except TypeError as e:
            raise ConfigError(f"{self.kind} {component.name!r}: {e}") from None
        finally:
            _CONFIG_WHERE.reset(token)
        return Selected(self.kind, component.name, obj)

    def default_mapping(self, name: str) -> dict[str, Any]:
        """The config section of ``name`` with its default settings."""
        return self.select(name).to_mapping()

    def built_by(self, obj: Any) -> Component | None:
        """The component whose build function returns objects of ``obj``'s class (by its return
        annotation), or None: how code holding a built module reads its component's traits."""
        for component in self._components.values():
            try:
                returned = typing.get_type_hints(component.build).get("return")
            except Exception:  # an annotation that does not resolve names no class
                continue
            if isinstance(returned, type) and type(obj) is returned:
                return component
        return None

    def with_setting(self, key: str) -> list[str]:
        """The components that have a setting called ``key``."""
        return [c.name for c in self if key in {f.name for f in fields(c.settings)}]


_REGISTRIES: dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    """The registry of ``kind``."""
    try:
        return _REGISTRIES[kind]
    except KeyError:
        raise ConfigError(f"no registry of kind {kind!r}; kinds: {', '.join(sorted(_REGISTRIES))}") from None


def registries() -> list[Registry]:
    """Every registry, in the order they were declared."""
    return list(_REGISTRIES.values())


NETWORKS = Registry("network", "network trunks (nets only, no probability)",
                    "event_ndims: trailing input dimensions of one example; output_shape: the observation's shape "
                    "(decoders)", traits=[
    Trait("reads", str, "any", "what it reads: any input, images [H, W, C] (an encoder's trunk) or a latent vector "
          "(a decoder's)", choices=("any", "image", "latent")),
    Trait("spatial_output", bool, False, "its features are per pixel, [..., H, W, F]: the likelihood's head acts on "
          "each pixel (a 1x1 convolution)"),
])
PRIORS = Registry("prior", "p(z)", "latent_dim, event_shape", traits=[
    Trait("exists", bool, True, "there is a p(z) (false: none, the autoencoder's, which defines no distribution over x "
          "until a density is fitted to its codes)"),
    Trait("needs_posterior", bool, False, "p(z) is defined through q(z | u) (the VampPrior): the posterior must have a "
          "density on a batch of inputs"),
    Trait("factorized", bool, False, "p(z) is a product over the latent dimensions (a KL to it splits over them: free "
          "bits)"),
    Trait("data_init", Callable, None, "data_init(settings, variables, *, examples, num_examples): a data-dependent "
          "initialisation the trainer runs on a new run (examples(k): k training examples as the model sees them)"),
    Trait("expost", bool, False, "a density over codes that is fitted to a trained run after training (an ex-post "
          "prior)"),
    Trait("log_prob", str, "exact", "what its log_prob is: exact, or the estimate or bound it computes instead"),
    Trait("label", str, "", "how a table names the distribution samples are drawn from (N(0, I); empty: its name)"),
    Trait("discrete", str, None, "its z is discrete: one-hot categorical variables or Bernoulli bits (None: continuous)",
          choices=("one_hot_categorical", "bernoulli")),
])
LIKELIHOODS = Registry("likelihood", "p(x | z)", "decoder (a trunk), event_shape", traits=[
    Trait("support", str, "real", "the values of x it is defined on: binary {0, 1}, 8bit k / 255, or real",
          choices=("binary", "8bit", "real")),
])
POSTERIORS = Registry("posterior", "q(z | x)", "encoder (a trunk), latent_dim", traits=[
    Trait("deterministic", bool, False, "q(z | x) = delta(z - f(x)), a point mass (the autoencoder's encoder): no "
          "density, so no ELBO"),
    Trait("batched_density", bool, False, "q(z | u) has a density on a batch of inputs (a VampPrior can be built on "
          "it)"),
    Trait("refinable", bool, False, "it has a variational family whose per-example parameters SVI optimises "
          "(semi-amortized training, the gaps' q*)"),
    Trait("layer_factors", bool, False, "each layer of a two-layer model can have a factor of this family, with these "
          "settings"),
    Trait("factorized", bool, False, "q(z | x) is a product over the latent dimensions (its KL to a factorized prior "
          "splits over them: free bits)"),
    Trait("discrete", str, None, "its z is discrete: one-hot categorical variables or Bernoulli bits (None: continuous)",
          choices=("one_hot_categorical", "bernoulli")),
    Trait("support_size", Callable, None, "support_size(settings, latent_dim): the number of values z takes (a "
          "discrete z: enumerable when small)"),
    Trait("reparameterized", bool, True, "its samples are a differentiable function of its parameters and noise, so "
          "the stl and dreg gradient estimators can differentiate through them"),
])
TRAINING = ("latent", "codes", "exact", "density")
"""The families of objectives, by what they train: a latent-variable model with a continuous z
(bounds and the autoencoders' objectives), a VQ-VAE's discrete codes, a model with an exact
log p(x), a density over real vectors.  A model kind and an objective fit together when their
``training`` traits are equal."""
MODEL_KINDS = Registry("model_kind", "model kinds", "model, inference (the typed sections), event_shape", traits=[
    Trait("latents", str, "continuous", "what its latent is: a continuous z [D], a VQ-VAE's discrete codes, or none "
          "(p(x) without a z)", choices=("continuous", "discrete", "none")),
    Trait("one_latent_vector", bool, False, "q(z | x) and p(z) are the posterior's and the prior's own, over one "
          "vector z: what needs their structure (free bits, the latent diagnostics) can rely on it"),
    Trait("exact_log_likelihood", bool, False, "its log p(x) is exact: nothing to infer or bound"),
    Trait("over_codes", bool, False, "it models vectors of integer code indices [M] (a VQ-VAE's codes), not "
          "observations"),
    Trait("training", str, "latent", "the objectives that train it (their training trait): " + ", ".join(TRAINING),
          choices=TRAINING),
])
OBJECTIVES = Registry("objective", "training objectives", "steps_per_epoch", traits=[
    Trait("training", str, "latent", "the model kinds it trains (their training trait): latent (a continuous z), "
          "codes (a VQ-VAE), exact (an exact log p(x)), density (a density over real vectors)", choices=TRAINING),
    Trait("bound_from_log_joint", bool, False, "it needs only log p(x, z) and a q(z | x) with a density, so any latent "
          "structure serves (two stochastic layers included)"),
    Trait("matches_prior", bool, False, "it matches the codes of a point-mass encoder to the model's p(z) in training "
          "(the WAE's MMD, the AAE's discriminator)"),
    Trait("markov_chain", bool, False, "the model it trains defines a Markov chain whose stationary distribution is its "
          "p(x) (the denoising AE's corruption and reconstruction)"),
    Trait("discrete_gradients", bool, False, "it trains a discrete z, with a gradient estimator for the discrete "
          "expectation (relaxed, straight-through, score function or enumeration)"),
    Trait("bound_of_any_q", bool, False, "a bound of any given q(z), which semi-amortized training can train the q it "
          "refined per example on (vaegen.objectives.multisample.terms_of_q)"),
])
ESTIMATORS = Registry("estimator", "estimators of `vaegen evaluate`", "an evaluation context", traits=[
    Trait("order", (int, float), 0, "its place in the results (and in 'all')"),
    Trait("stream", int, 0, "the random stream it draws from (estimators on one stream share their draws)"),
    Trait("reports", str, "", "what its numbers are (a lower bound, a stochastic lower bound, ...)"),
])


def reads_latents(component: Component) -> bool:
    """A trunk that can read a latent vector z (a decoder's trunk): its ``reads`` trait."""
    return component.trait("reads") in ("any", "latent")


def reads_images(component: Component) -> bool:
    """A trunk that can read observations x [H, W, C] (an encoder's trunk)."""
    return component.trait("reads") in ("any", "image")


def reads_vectors(component: Component) -> bool:
    """A trunk from vectors to feature vectors (p(z1 | z2), q(z2 | z1))."""
    return component.trait("reads") in ("any", "latent") and not component.trait("spatial_output")


# --- parsing and printing settings -----------------------------------------------------------------

def parse(cls: type, mapping: Mapping[str, Any] | None, where: str = "") -> Any:
    """A ``cls`` settings object from a loose mapping (a config section): every key must be a
    setting, every value of the setting's type and range; missing settings take their defaults.
    Nested settings dataclasses and component slots are parsed recursively.  Messages name the
    key as ``config.<where>.<setting>``."""
    mapping = dict(mapping or {})
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        key = _key(where, unknown[0])
        close = difflib.get_close_matches(unknown[0], sorted(names), n=3)
        hint = f"; did you mean {', '.join(_key(where, c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}")
    values = {}
    for f in fields(cls):
        key = _key(where, f.name)
        if f.name not in mapping:
            continue
        value = mapping[f.name]
        tp = hints[f.name]
        if f.metadata.get("slot"):
            values[f.name] = parse_selected(f.metadata["slot"], value, key, accepts=f.metadata.get("accepts"),
                                            role=f.metadata.get("role", ""))
        elif dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config.{key} is a section; set one of its keys: "
                                  f"{', '.join(g.name for g in fields(tp))}")
            values[f.name] = parse(tp, value, key)
        else:
            values[f.name] = _coerce(value, tp, f"config.{key}")
    token = _CONFIG_WHERE.set(where)
    try:
        return cls(**values)
    finally:
        _CONFIG_WHERE.reset(token)


def parse_selected(kind: str, value: Any, where: str, *, accepts: Callable[[Component], bool] | None = None,
                   role: str = "") -> Selected:
    """A component section ``{"name": ..., **settings}`` (or a bare name) as a :class:`Selected`."""
    reg = registry(kind)
    if isinstance(value, str):
        value = {"name": value}
    if isinstance(value, Selected):
        value = value.to_mapping()
    if not isinstance(value, Mapping):
        raise ConfigError(f"config.{where} is a {kind} section {{name: ..., settings}}, got {value!r}")
    value = dict(value)
    if "name" not in value:
        raise ConfigError(f"config.{where} needs a name: one of {', '.join(reg.names())}")
    name = value.pop("name")
    component = reg.get(name, f"{where}.name")
    if accepts is not None and not accepts(component):
        allowed = [c.name for c in reg if accepts(c)]
        raise ConfigError(f"config.{where}.name={component.name!r} cannot serve {role or 'this slot'}; "
                          f"choose one of {', '.join(allowed)}")
    unknown = sorted(set(value) - {f.name for f in fields(component.settings)})
    if unknown:
        others = reg.with_setting(unknown[0])
        takes = ", ".join(f.name for f in fields(component.settings)) or "none"
        hint = (f"; the {kind}s with that setting: {', '.join(others)}" if others else "")
        raise ConfigError(f"config.{where}.{unknown[0]}: the {kind} {component.name!r} has no setting "
                          f"{unknown[0]!r} (its settings: {takes}){hint}")
    return Selected(kind, component.name, parse(component.settings, value, where))


def to_mapping(obj: Any) -> dict[str, Any]:
    """The loose form of a settings object: ``{field: value}``, nested settings and components as
    nested mappings (the inverse of :func:`parse`)."""
    out: dict[str, Any] = {}
    for f in fields(type(obj)):
        value = getattr(obj, f.name)
        if isinstance(value, Selected):
            out[f.name] = value.to_mapping()
        elif dataclasses.is_dataclass(value):
            out[f.name] = to_mapping(value)
        else:
            out[f.name] = value
    return out


def selected_components(obj: Any, where: str = "") -> list[tuple[str, Selected]]:
    """Every component chosen in a settings object, with its path: ``[("model.prior", Selected)]``."""
    out = []
    for f in fields(type(obj)):
        value = getattr(obj, f.name)
        key = _key(where, f.name)
        if isinstance(value, Selected):
            out.append((key, value))
            out += selected_components(value.settings, key)
        elif dataclasses.is_dataclass(value):
            out += selected_components(value, key)
    return out


def describe(cls: type) -> list[dict[str, Any]]:
    """The settings of a settings dataclass as rows: name, type, default, range, doc."""
    hints = _hints(cls)
    rows = []
    for f in fields(cls):
        if f.metadata.get("slot"):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            rows.append({"name": f.name, "type": f"{f.metadata['slot']} section", "default": default.name,
                         "range": "", "doc": f.metadata.get("doc", "")})
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            rows.append({"name": f.name, "type": "section", "default": "", "range": "", "doc": f.metadata.get("doc", "")})
            continue
        meta = f.metadata or {}
        rng = ""
        if meta.get("choices"):
            rng = " \\| ".join(meta["choices"])
        elif meta:
            rng = _interval(meta) or ""
            item = _interval({"gt": meta.get("items_gt"), "ge": meta.get("items_ge"), "lt": None, "le": None})
            if item:
                rng = f"each {item}"
        rows.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default, "range": rng,
                     "doc": meta.get("doc", "")})
    return rows
