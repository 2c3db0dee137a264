"""The Qt face: thin adapters (item models, panels, workers) over ``studio.core``."""
