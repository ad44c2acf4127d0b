"""The typed run spec (:class:`vaegen.spec.run.RunSpec`) and the settings of the run's fixed
sections (optimiser, training, evaluation, gaps), below every layer that reads a run spec."""
