"""The configuration boundary: presets and overrides (ml_collections), validated once and converted
into typed specs that the code below reads."""
