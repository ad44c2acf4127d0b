"""A trained run loaded from its workdir, and its evaluation on held-out data."""
