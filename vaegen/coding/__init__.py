"""Lossless coding: every model that defines p(x) compresses images at about -log2 p(x) bits each.

:mod:`vaegen.coding.coders` holds the registered coders (bits back with ANS for a VAE, with a
continuous or a discrete z, a quantized code for an autoencoder with a density over its codes, a
VQ-VAE's codes with its prior, MADE's pixels) and the chained coding of a set of images;
:mod:`vaegen.coding.latents` turns a continuous p(z) and q(z | x) into entropy models on a grid
(:mod:`vaegen.coding.grid`), :mod:`vaegen.coding.discrete` a discrete one into exact entropy models;
:mod:`vaegen.coding.observations` does the same for p(x | z); :mod:`vaegen.coding.ans` is the entropy coder (constriction's ANS).
The file format and the run-level API are :mod:`vaegen.runs.compression`.
"""
