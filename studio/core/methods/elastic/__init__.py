"""Elastic (once-for-all) supernets: elastic width and depth over the user's model, trained
with progressive shrinking and in-place distillation."""
