"""Quantization: onnxruntime post-training passes over ONNX files, and quantization-aware
training with fake quant at 2-8 bits exported as QDQ."""
