"""The tiny model's fixtures (a pytest plugin registered in ``tests/conftest.py``): a
local Hugging Face model folder and the Triton model repository exported from it, each
built once a session by :mod:`tests.support.tiny_model`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_model import build_tiny_model, build_tiny_model_repository


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local HF model dir: tiny RoBERTa classifier (4 emotion labels) + BPE tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-hf-model"))


@pytest.fixture(scope="session")
def tiny_model_repository(tiny_hf_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton model repository (``emotion-classifier``, v1) exported from the tiny model."""
    return build_tiny_model_repository(tiny_hf_model, tmp_path_factory.mktemp("model-repository"))
