"""Configuration presets (ml_collections).  ``vaegen train --config NAME`` loads ``NAME.py`` here;
each preset's docstring gives its command, runtime and expected result."""
