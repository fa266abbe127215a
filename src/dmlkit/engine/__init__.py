"""Training engine: the trainer, checkpoints, evaluation and the run directory."""
