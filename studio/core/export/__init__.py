"""ONNX export and the measurements that prove a compressed model is smaller and faster."""
