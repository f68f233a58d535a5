"""Training: the run folder, atomic checkpoints, and the training loop."""
