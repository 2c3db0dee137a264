"""Compression Studio: make neural networks smaller and faster without losing their accuracy."""

__version__ = "0.1.0"
