"""The Python-backend model that serves an ONNX model through pytriton's tritonserver.

``model.py`` is copied verbatim into the generated twin repository as ``<version>/model.py``;
it is a module here so that ruff, mypy and unit tests see it.
"""
