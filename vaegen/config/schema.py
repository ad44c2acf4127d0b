"""The configuration boundary: a loose ``ml_collections.ConfigDict`` (presets, overrides,
printing) to and from the typed :class:`vaegen.spec.run.RunSpec`.

:func:`to_spec` converts a config, once, into a RunSpec of frozen dataclasses -- every key
checked against its declaration, every component looked up in its registry -- and nothing below
this boundary reads the ConfigDict.  The schema itself (the RunSpec and its sections) is declared
in :mod:`vaegen.spec`, below every layer that reads it.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from vaegen.registry import parse, to_mapping
from vaegen.spec.run import RunSpec


def to_spec(config: ml_collections.ConfigDict | Mapping[str, Any]) -> RunSpec:
    """The typed run spec of a config (a ConfigDict or a nested mapping): the boundary.
    Raises :class:`vaegen.errors.ConfigError` naming the first key that is wrong."""
    mapping = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    return parse(RunSpec, mapping)


def to_config(spec: RunSpec) -> ml_collections.ConfigDict:
    """The loose, locked ConfigDict of a run spec (for presets, overrides and printing)."""
    config = ml_collections.ConfigDict(to_mapping(spec))
    config.lock()
    return config


def default_config() -> ml_collections.ConfigDict:
    """The defaults of every key, as a locked ConfigDict: where every preset starts."""
    return to_config(RunSpec())
