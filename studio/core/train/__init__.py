"""Fine-tuning and evaluation loops that report events and honour cancel at every batch."""
