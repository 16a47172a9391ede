"""The embedded Triton server: the Python-backend twin answers like onnxruntime in-process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from transformers import AutoTokenizer
from tritonclient.utils import InferenceServerException

from emotion_stream.layout import ATTENTION_MASK, INPUT_IDS, LOGITS, ModelLayout
from tests.support.service_fixtures import TritonService
from tests.support.tiny_model import MODEL_MAX_TOKENS, TINY_VOCAB_SIZE, sample_sentences

pytestmark = pytest.mark.integration

# The twin runs the same file with the same onnxruntime; only thread scheduling and
# batch composition may move the last bits.
LOGITS_ATOL = 1e-4
MAX_BATCH = 32  # the exported config's max_batch_size

Tokens = dict[str, npt.NDArray[np.int64]]


def _tokens(layout: ModelLayout, texts: list[str]) -> Tokens:
    tokenizer = AutoTokenizer.from_pretrained(str(layout.tokenizer_dir))
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=MODEL_MAX_TOKENS, return_tensors="np"
    )
    return {name: encoded[name].astype(np.int64) for name in (INPUT_IDS, ATTENTION_MASK)}


def _in_process(layout: ModelLayout, tokens: Tokens) -> npt.NDArray[np.float32]:
    session = ort.InferenceSession(str(layout.onnx), providers=["CPUExecutionProvider"])
    (logits,) = session.run([LOGITS], tokens)
    return np.asarray(logits, dtype=np.float32)


def _infer(url: str, layout: ModelLayout, tokens: Tokens) -> npt.NDArray[np.float32]:
    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = []
        for name, array in tokens.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = client.infer(layout.name, inputs)
        return np.asarray(result.as_numpy(LOGITS), dtype=np.float32)
    finally:
        client.close()


@pytest.fixture(scope="module")
def layout(tiny_model_repository: Path) -> ModelLayout:
    return ModelLayout(tiny_model_repository)


@pytest.mark.parametrize("batch", [1, 8, MAX_BATCH])
def test_grpc_logits_match_onnxruntime_in_process(
    triton_server: TritonService, layout: ModelLayout, batch: int
) -> None:
    tokens = _tokens(layout, sample_sentences(batch))

    served = _infer(triton_server.grpc_url, layout, tokens)

    assert served.shape == (batch, len(layout.read_labels()))
    np.testing.assert_allclose(served, _in_process(layout, tokens), atol=LOGITS_ATOL)


def test_model_metadata_mirrors_the_exported_config(
    triton_server: TritonService, layout: ModelLayout
) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        config = client.get_model_config(layout.name, as_json=True)["config"]
    finally:
        client.close()
    assert config["max_batch_size"] == MAX_BATCH
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        (INPUT_IDS, "TYPE_INT64", ["-1"]),
        (ATTENTION_MASK, "TYPE_INT64", ["-1"]),
    ]
    assert [(o["name"], o["dims"], o["label_filename"]) for o in config["output"]] == [
        (LOGITS, [str(len(layout.read_labels()))], "labels.txt")
    ]


@pytest.mark.parametrize(
    ("input_ids", "attention_mask", "complaint"),
    [
        ([[0, TINY_VOCAB_SIZE, 2]], [[1, 1, 1]], "vocabulary"),
        ([[0, -1, 2]], [[1, 1, 1]], "vocabulary"),
        ([[5] * (MODEL_MAX_TOKENS + 1)], [[1] * (MODEL_MAX_TOKENS + 1)], "exceeds"),
        ([[0, 5, 2]], [[1, 1]], "differs"),
        ([[0, 5, 2]], [[1, 7, 1]], "0 and 1"),
    ],
    ids=["id-too-large", "negative-id", "too-long", "shape-mismatch", "bad-mask"],
)
def test_bad_inputs_are_invalid_argument_and_the_server_keeps_serving(
    triton_server: TritonService,
    layout: ModelLayout,
    input_ids: list[list[int]],
    attention_mask: list[list[int]],
    complaint: str,
) -> None:
    bad = {
        INPUT_IDS: np.array(input_ids, dtype=np.int64),
        ATTENTION_MASK: np.array(attention_mask, dtype=np.int64),
    }
    with pytest.raises(InferenceServerException) as raised:
        _infer(triton_server.grpc_url, layout, bad)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert complaint in (raised.value.message() or "")

    good = _tokens(layout, sample_sentences(2))
    assert _infer(triton_server.grpc_url, layout, good).shape[0] == 2


def test_stop_then_start_serves_again_on_the_same_address(
    triton_server: TritonService, layout: ModelLayout
) -> None:
    tokens = _tokens(layout, sample_sentences(3))
    before = _infer(triton_server.grpc_url, layout, tokens)

    triton_server.stop()
    with pytest.raises(InferenceServerException):
        _infer(triton_server.grpc_url, layout, tokens)
    triton_server.start()

    np.testing.assert_allclose(
        _infer(triton_server.grpc_url, layout, tokens), before, atol=LOGITS_ATOL
    )


def test_concurrent_requests_each_get_their_own_logits(
    triton_server: TritonService, layout: ModelLayout
) -> None:
    # Same padded length, sent at once: dynamic batching may hand them to the twin
    # together, and it runs them as one batch like Triton's onnxruntime backend would.
    # INT8 dynamic quantization scales activations per tensor, so a row's logits move a
    # little with its batch mates; what must hold is that every answer is its own
    # request's (far closer to its own logits than to any other request's).
    tokens = _tokens(layout, sample_sentences(16))
    rows = [{name: array[row : row + 1] for name, array in tokens.items()} for row in range(16)]
    alone = np.concatenate([_in_process(layout, row) for row in rows])

    with ThreadPoolExecutor(max_workers=len(rows)) as pool:
        served = np.concatenate(
            list(pool.map(lambda row: _infer(triton_server.grpc_url, layout, row), rows))
        )

    distances = np.linalg.norm(served[:, None, :] - alone[None, :, :], axis=2)
    assert distances.argmin(axis=1).tolist() == list(range(len(rows)))
