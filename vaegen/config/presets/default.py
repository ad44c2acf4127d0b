"""The complete configuration schema with its defaults; every preset starts from it.

The schema is the typed run spec (:class:`vaegen.spec.run.RunSpec`): its sections declare
every key, its type, default and valid range, and every component section takes the settings of
the component it names (``vaegen config --components`` lists them).  ``--config.a.b=value`` may
only change an existing key, and its new value must have the key's type (ints are accepted for
floats).
"""

from vaegen.config import schema


def get_config(arg: str | None = None):
    del arg
    return schema.default_config()
