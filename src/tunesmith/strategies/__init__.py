"""Fine-tuning strategies on layer groups: freezing and unfreezing, learning rates per group."""
