"""What a run reports: metrics, the metrics history file, and the model card."""
