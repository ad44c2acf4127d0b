"""Runs: training one from a config (:mod:`vaegen.runs.training`), loading a trained one from its
workdir (:mod:`vaegen.runs.run`), and evaluating it on held-out data (:mod:`vaegen.runs.evaluate`)."""
