"""The engine: one training loop on Accelerate, evaluation, checkpoints, and the run directory."""
