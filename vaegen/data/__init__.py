"""Data: datasets (TFDS, offline import, scikit-learn digits), splits, binarization protocols and
checks on the arrays a run is given."""
