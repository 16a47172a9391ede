"""Stage 6a: the Triton model configuration and labels file.

The text is generated, never templated by hand, so the tracked
``triton_models/emotion-classifier/config.pbtxt`` is exactly what an export writes.
Thread counts are explicit: onnxruntime's default (one thread per core per model
instance) oversubscribes a small machine shared with the worker and Kafka.
Keys: Triton onnxruntime backend, "Model Config Options" (``intra_op_thread_count``,
``inter_op_thread_count``).
"""

from __future__ import annotations

from emotion_stream.layout import ATTENTION_MASK, INPUT_IDS, LABELS_FILE, LOGITS
from exporter.runtime import TRITON_MAX_BATCH, Threads

TRITON_PLATFORM = "onnxruntime_onnx"
# The machine this project targets has 2 cores (MEASUREMENTS.md); one model instance
# using both, with sequential execution (an encoder has no parallel branches to use).
DEFAULT_THREADS = Threads(intra_op=2, inter_op=1)


def config_pbtxt(
    model_name: str,
    num_labels: int,
    max_batch_size: int = TRITON_MAX_BATCH,
    threads: Threads = DEFAULT_THREADS,
) -> str:
    """The ``config.pbtxt`` text for the exported classifier."""
    return f"""\
# Written by `emotion-stream export`; regenerate rather than edit.
name: "{model_name}"
platform: "{TRITON_PLATFORM}"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_IDS}"
    data_type: TYPE_INT64
    dims: [ -1 ]
  }},
  {{
    name: "{ATTENTION_MASK}"
    data_type: TYPE_INT64
    dims: [ -1 ]
  }}
]
output [
  {{
    name: "{LOGITS}"
    data_type: TYPE_FP32
    dims: [ {num_labels} ]
    label_filename: "{LABELS_FILE}"
  }}
]
instance_group [
  {{
    kind: KIND_CPU
    count: 1
  }}
]
# Merges requests already queued with the same shape; the worker sends full batches.
dynamic_batching {{ }}
parameters {{
  key: "intra_op_thread_count"
  value: {{ string_value: "{threads.intra_op}" }}
}}
parameters {{
  key: "inter_op_thread_count"
  value: {{ string_value: "{threads.inter_op}" }}
}}
"""


def labels_txt(labels: list[str]) -> str:
    """One label per line, in id2label order."""
    return "".join(f"{label}\n" for label in labels)
