"""The built-in demo: a small CNN trained on real handwritten digits, shipped with the app."""
