"""The project folder: model reference, example input and plan (experiments join later)."""
