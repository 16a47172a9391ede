"""Where things live in a Triton model repository built by the exporter.

The exporter writes this layout, the embedded Triton serves it and the worker reads
its tokenizer and labels from it. One module names the paths so the three never
disagree; it imports nothing heavier than the standard library.

::

    <repository>/<model_name>/
        config.pbtxt         Triton config, platform onnxruntime_onnx
        labels.txt           one label per line, in the model's id2label order
        export-report.json   what the exporter did and measured
        tokenizer/           the Hugging Face tokenizer files (Triton ignores
                             non-numeric sub-folders of a model folder)
        <version>/model.onnx the INT8 model
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_NAME = "emotion-classifier"
DEFAULT_MODEL_VERSION = 1
DEFAULT_HUB_MODEL = "cardiffnlp/twitter-roberta-base-emotion"
REPOSITORY_ENV = "EMOTION_STREAM_MODEL_REPOSITORY"

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
REPORT_FILE = "export-report.json"
TOKENIZER_DIR = "tokenizer"
ONNX_FILE = "model.onnx"

# Tensor names shared by the ONNX graph, config.pbtxt and the worker's request.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LOGITS = "logits"


def project_root() -> Path:
    """The checkout this package was installed from (editable install)."""
    return Path(__file__).resolve().parent.parent


def default_repository() -> Path:
    """``$EMOTION_STREAM_MODEL_REPOSITORY`` or ``<checkout>/triton_models``."""
    env = os.environ.get(REPOSITORY_ENV)
    return Path(env) if env else project_root() / "triton_models"


@dataclass(frozen=True)
class ModelLayout:
    """The paths of one model inside a Triton model repository."""

    repository: Path
    name: str = DEFAULT_MODEL_NAME
    version: int = DEFAULT_MODEL_VERSION

    @property
    def model_dir(self) -> Path:
        return self.repository / self.name

    @property
    def config(self) -> Path:
        return self.model_dir / CONFIG_FILE

    @property
    def labels(self) -> Path:
        return self.model_dir / LABELS_FILE

    @property
    def report(self) -> Path:
        return self.model_dir / REPORT_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.model_dir / TOKENIZER_DIR

    @property
    def version_dir(self) -> Path:
        return self.model_dir / str(self.version)

    @property
    def onnx(self) -> Path:
        return self.version_dir / ONNX_FILE

    def read_labels(self) -> list[str]:
        """Labels in model order; blank lines are not labels."""
        lines = self.labels.read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()]
