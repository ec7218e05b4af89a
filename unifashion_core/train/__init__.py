"""Training: one accelerate loop, the phase stages, checkpoints and resume."""
