"""Training: the trainer, checkpoints, telemetry, plots, data parallelism and ablation sweeps."""
