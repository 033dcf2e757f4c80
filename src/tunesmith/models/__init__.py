"""Model sources (where weights come from) and layer groups (how a backbone is sliced)."""
