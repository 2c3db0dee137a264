"""Benchmarks that check the speed claims (large trees, GUI responsiveness) on realistic models."""
