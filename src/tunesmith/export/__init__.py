"""Exporting fine-tuned models to other runtimes (ONNX), each format checked against PyTorch."""
