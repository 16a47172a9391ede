"""The Python-backend twin mirrors the exporter's ONNX config; its input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from compose import twin
from compose.triton_twin import model as twin_model
from emotion_stream import layout

EXPORTED_CONFIG = """
name: "emotion-classifier"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }
]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]
instance_group [ { kind: KIND_GPU count: 2 } ]
dynamic_batching { }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
"""
VOCAB, POSITIONS, LABELS = 50, 20, 4


def _tiny_onnx(path: Path, *, position_table: int = POSITIONS) -> None:
    """input_ids/attention_mask -> word + position embeddings -> masked sum -> logits."""
    rng = np.random.default_rng(0)
    init = [
        numpy_helper.from_array(rng.normal(size=(VOCAB, 8)).astype(np.float32), "word_embeddings"),
        numpy_helper.from_array(
            rng.normal(size=(position_table, 8)).astype(np.float32), "position_embeddings"
        ),
        numpy_helper.from_array(rng.normal(size=(8, LABELS)).astype(np.float32), "classifier"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"),
    ]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.INT64),
        helper.make_node("Gather", ["word_embeddings", "ids"], ["words"]),
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["length"]),
        helper.make_node("Range", ["zero", "length", "one"], ["positions"]),
        helper.make_node("Gather", ["position_embeddings", "positions"], ["placed"]),
        helper.make_node("Add", ["words", "placed"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "classifier"], ["logits"]),
    ]
    tokens = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, tokens),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, tokens),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", LABELS])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    model = layout.ModelLayout(tmp_path / "repo")
    _tiny_onnx(model.onnx)
    model.config.write_text(EXPORTED_CONFIG)
    model.labels.write_text("anger\njoy\noptimism\nsadness\n")
    return model.repository


def test_twin_config_mirrors_what_clients_see(repository: Path, tmp_path: Path) -> None:
    (made,) = twin.generate_twin_repository(repository, tmp_path / "twin")

    source = twin.read_config(repository / "emotion-classifier" / "config.pbtxt")
    mirrored = twin.read_config(made.twin_dir / "config.pbtxt")
    assert mirrored.backend == "python" and mirrored.platform == ""
    assert mirrored.name == source.name == "emotion-classifier"
    assert mirrored.max_batch_size == source.max_batch_size
    assert list(mirrored.input) == list(source.input)
    assert list(mirrored.output) == list(source.output)
    assert mirrored.HasField("dynamic_batching")
    # The twin runs on CPU with as many instances as asked for.
    assert [(g.kind, g.count) for g in mirrored.instance_group] == [
        (mc.ModelInstanceGroup.KIND_CPU, 2)
    ]
    parameters = {key: value.string_value for key, value in mirrored.parameters.items()}
    assert parameters == {
        "intra_op_thread_count": "2",  # the exporter's choice wins
        "inter_op_thread_count": "1",
        "vocab_size": str(VOCAB),
        "max_sequence_length": str(POSITIONS),
    }


def test_twin_files_link_the_same_onnx_and_copy_labels(repository: Path, tmp_path: Path) -> None:
    (made,) = twin.generate_twin_repository(repository, tmp_path / "twin")

    onnx_link = made.twin_dir / "1" / "model.onnx"
    assert onnx_link.is_symlink()
    assert onnx_link.resolve() == (repository / "emotion-classifier/1/model.onnx").resolve()
    assert (made.twin_dir / "1" / "model.py").read_text() == twin.TWIN_MODEL_SOURCE.read_text()
    assert (made.twin_dir / "labels.txt").read_text().split() == [
        "anger",
        "joy",
        "optimism",
        "sadness",
    ]


def test_regenerating_replaces_the_previous_twin(repository: Path, tmp_path: Path) -> None:
    twin.generate_twin_repository(repository, tmp_path / "twin")
    (tmp_path / "twin" / "emotion-classifier" / "stale.txt").write_text("old")
    twin.generate_twin_repository(repository, tmp_path / "twin")
    assert not (tmp_path / "twin" / "emotion-classifier" / "stale.txt").exists()


def test_roberta_positions_start_after_the_padding_index(repository: Path) -> None:
    model = repository / "emotion-classifier"
    (model / "tokenizer").mkdir()
    (model / "tokenizer" / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "RobertaTokenizer"}'
    )
    limits = twin.discover_limits(model / "1" / "model.onnx", model)
    assert limits == twin_model.InputLimits(vocab_size=VOCAB, max_sequence_length=POSITIONS - 2)


def test_a_repository_without_onnx_model_says_export_first(tmp_path: Path) -> None:
    (tmp_path / "repo" / "emotion-classifier").mkdir(parents=True)
    (tmp_path / "repo" / "emotion-classifier" / "config.pbtxt").write_text(EXPORTED_CONFIG)
    with pytest.raises(twin.TwinError, match="emotion-stream export"):
        twin.generate_twin_repository(tmp_path / "repo", tmp_path / "twin")


def test_config_round_trips_through_triton_schema(repository: Path, tmp_path: Path) -> None:
    (made,) = twin.generate_twin_repository(repository, tmp_path / "twin")
    text = (made.twin_dir / "config.pbtxt").read_text()
    assert text_format.Parse(text, mc.ModelConfig()).backend == "python"


LIMITS = twin_model.InputLimits(vocab_size=VOCAB, max_sequence_length=POSITIONS)


def _ids(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.int64)


def test_valid_tokens_pass() -> None:
    twin_model.check_token_inputs(
        _ids([[0, 5, 49], [0, 2, 1]]), _ids([[1, 1, 1], [1, 1, 0]]), LIMITS
    )


@pytest.mark.parametrize(
    ("ids", "mask", "complaint"),
    [
        (_ids([[0, 50]]), _ids([[1, 1]]), "vocabulary"),
        (_ids([[-1, 2]]), _ids([[1, 1]]), "vocabulary"),
        (_ids([[1] * 21]), _ids([[1] * 21]), "exceeds"),
        (_ids([[1, 2]]), _ids([[1, 1, 1]]), "differs"),
        (_ids([[1, 2]]), _ids([[1, 2]]), "0 and 1"),
        (_ids([[1, 2]]).astype(np.int32), _ids([[1, 1]]), "INT64"),
        (_ids([1, 2]), _ids([1, 1]), "[batch, sequence]"),
        (np.zeros((1, 0), dtype=np.int64), np.zeros((1, 0), dtype=np.int64), "empty"),
    ],
)
def test_invalid_tokens_are_rejected(ids: np.ndarray, mask: np.ndarray, complaint: str) -> None:
    with pytest.raises(twin_model.InvalidInputError, match=complaint):
        twin_model.check_token_inputs(ids, mask, LIMITS)


def test_unknown_limits_check_only_what_is_known() -> None:
    unknown = twin_model.InputLimits()
    twin_model.check_token_inputs(_ids([[10**6] * 600]), _ids([[1] * 600]), unknown)


def test_twin_tensor_names_match_the_shared_layout() -> None:
    # model.py runs inside Triton and cannot import the project; it repeats the names.
    assert (twin_model.INPUT_IDS, twin_model.ATTENTION_MASK) == (
        layout.INPUT_IDS,
        layout.ATTENTION_MASK,
    )
    assert twin_model.ONNX_FILE == layout.ONNX_FILE


def _summing_model(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Stands in for onnxruntime: one output row per input row; refuses id 99."""
    ids = feeds["input_ids"]
    if (ids == 99).any():
        raise ValueError("bad id 99")
    return [ids.sum(axis=1, keepdims=True).astype(np.float32)]


def _request(*rows: list[int]) -> dict[str, np.ndarray]:
    ids = np.array(rows, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def test_same_shaped_requests_run_as_one_batch_and_split_back() -> None:
    calls: list[int] = []

    def model(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append(len(feeds["input_ids"]))
        return _summing_model(feeds)

    requests = [_request([1, 2]), _request([3, 4], [5, 6]), _request([1, 1, 1]), _request([7, 8])]
    outcomes = twin_model.run_merged(requests, model)

    assert sorted(calls) == [1, 4]  # the three 2-token requests together, the 3-token alone
    assert [o[0].ravel().tolist() for o in outcomes] == [[3], [7, 11], [3], [15]]


def test_a_failing_merged_batch_fails_only_the_guilty_request() -> None:
    outcomes = twin_model.run_merged(
        [_request([1, 2]), _request([99, 1]), _request([3, 3])], _summing_model
    )

    assert isinstance(outcomes[1], ValueError)
    assert [outcomes[0][0].ravel().tolist(), outcomes[2][0].ravel().tolist()] == [[3], [6]]
