"""Parameter-efficient recovery: low-rank adapters (LoRA, DoRA) through ``peft``."""
