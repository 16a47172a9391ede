"""The exporter's pure parts: config text, tracked repository files, metrics, the swap."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2

from emotion_stream.layout import DEFAULT_MODEL_NAME, ModelLayout, project_root
from exporter import repository, texts
from exporter.errors import ExportError, ParityGateError
from exporter.parity import EvalFigures, ParityFigures, enforce_gate, gold_ids, macro_f1
from exporter.runtime import Threads
from exporter.texts import BUILT_IN_TEXTS, LabelledText, read_jsonl, sample_texts
from exporter.triton_config import config_pbtxt, labels_txt

# cardiffnlp/twitter-roberta-base-emotion's id2label (its config.json on the hub)
CARDIFF_LABELS = ["anger", "joy", "optimism", "sadness"]


def figures(agreement: float, f1_fp32: float | None = None, f1_int8: float = 0.0) -> ParityFigures:
    evaluation = None
    if f1_fp32 is not None:
        evaluation = EvalFigures(10, 0.8, 0.8, f1_fp32, f1_int8)
    return ParityFigures(100, "test", agreement, 0.1, 0.01, 0.02, 10, 1.0, evaluation)


def test_tracked_repository_files_are_what_the_exporter_writes() -> None:
    layout = ModelLayout(project_root() / "triton_models")
    assert layout.config.read_text() == config_pbtxt(DEFAULT_MODEL_NAME, len(CARDIFF_LABELS))
    assert layout.labels.read_text() == labels_txt(CARDIFF_LABELS)
    assert layout.read_labels() == CARDIFF_LABELS


def test_config_pbtxt_parses_with_tritons_schema() -> None:
    # text_format rejects unknown fields: the same check Triton makes when loading
    config = text_format.Parse(config_pbtxt("m", 4), model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("input_ids", model_config_pb2.TYPE_INT64, [-1]),
        ("attention_mask", model_config_pb2.TYPE_INT64, [-1]),
    ]
    (output,) = config.output
    assert (output.name, output.data_type, list(output.dims)) == (
        "logits",
        model_config_pb2.TYPE_FP32,
        [4],
    )
    assert output.label_filename == "labels.txt"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["intra_op_thread_count"].string_value == "2"
    assert config.parameters["inter_op_thread_count"].string_value == "1"


def test_config_pbtxt_carries_threads_and_batch_size() -> None:
    text = config_pbtxt("m", 3, max_batch_size=8, threads=Threads(intra_op=4, inter_op=2))
    assert 'name: "m"' in text
    assert "max_batch_size: 8" in text
    assert "dims: [ 3 ]" in text
    assert 'key: "intra_op_thread_count"\n  value: { string_value: "4" }' in text
    assert 'key: "inter_op_thread_count"\n  value: { string_value: "2" }' in text
    assert "kind: KIND_CPU" in text


def test_labels_txt_is_one_per_line_in_order() -> None:
    assert labels_txt(["b", "a"]) == "b\na\n"


def test_macro_f1_matches_a_hand_count() -> None:
    gold = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    # class 0: tp 1, pred 2, gold 2 -> 0.5; class 1: tp 2, pred 3, gold 2 -> 0.8; class 2: 0
    assert macro_f1(gold, predicted) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_gold_labels_by_name_or_id() -> None:
    rows = [LabelledText("a", "joy"), LabelledText("b", "3")]
    assert gold_ids(rows, CARDIFF_LABELS).tolist() == [1, 3]
    with pytest.raises(ExportError, match="'fear' is not one of"):
        gold_ids([LabelledText("c", "fear")], CARDIFF_LABELS)


def test_read_jsonl_rejects_lines_without_text(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": "joy"}) + "\n" + json.dumps({"x": 1}) + "\n")
    with pytest.raises(ExportError, match=r"eval\.jsonl:2: expected a JSON object with 'text'"):
        read_jsonl(path)


def test_gate_passes_at_and_above_thresholds() -> None:
    enforce_gate(figures(0.97), min_agreement=0.97, max_f1_drop=1.0)
    enforce_gate(figures(0.99, f1_fp32=0.780, f1_int8=0.775), min_agreement=0.97, max_f1_drop=1.0)


def test_gate_message_names_every_failed_figure() -> None:
    with pytest.raises(ParityGateError) as caught:
        enforce_gate(figures(0.9, f1_fp32=0.78, f1_int8=0.70), min_agreement=0.97, max_f1_drop=1.0)
    message = str(caught.value)
    assert "label agreement 90.00% on 100 texts (90 agree)" in message and "< 97.00%" in message
    assert "macro-F1 drop 8.00 points > 1.00" in message
    assert "\n" not in message


def test_failed_rename_puts_the_previous_model_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.pbtxt").write_text("old")
    staging = tmp_path / ".model.tmp-1"
    staging.mkdir()
    (staging / "config.pbtxt").write_text("new")
    real_rename = os.rename
    calls: list[str] = []

    def rename_failing_second(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        calls.append(str(src))
        if len(calls) == 2:
            raise OSError("injected")
        real_rename(src, dst)

    monkeypatch.setattr("exporter.repository.os.rename", rename_failing_second)
    with pytest.raises(OSError, match="injected"):
        repository._swap_into_place(staging, target)
    assert (target / "config.pbtxt").read_text() == "old"


def test_sample_texts_fall_back_to_built_in_without_shared_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(texts, "SHARED_TWEETS", tmp_path / "absent.jsonl")
    sample, source = sample_texts(5)
    assert sample == list(BUILT_IN_TEXTS[:5])
    assert source.startswith("built-in")


def test_sample_texts_read_the_shared_file_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "tweets.jsonl"
    shared.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": "joy"}) + "\n" for i in range(9))
    )
    monkeypatch.setattr(texts, "SHARED_TWEETS", shared)
    sample, source = sample_texts(4)
    assert sample == ["t0", "t1", "t2", "t3"]
    assert source == "tweets.jsonl (4)"
