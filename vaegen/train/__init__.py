"""The one trainer: fused epochs, optimizer, random streams, workdir, checkpoints, faults."""
