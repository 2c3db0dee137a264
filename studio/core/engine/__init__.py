"""The engine: carry out a recipe (prune, recover, quantize, export) and measure the result."""
