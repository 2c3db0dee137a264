"""Datasets and batches for calibration, fine-tuning and evaluation."""
