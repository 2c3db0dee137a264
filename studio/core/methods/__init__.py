"""Compression methods: pruning, quantization, distillation; each module does one job."""
