"""Hugging Face model -> ONNX -> fused -> INT8 -> Triton model repository."""
