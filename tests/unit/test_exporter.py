# mypy: disable-error-code="no-untyped-call"
# (transformers ships no type hints for its model and tokenizer constructors)
"""The exporter end to end on the tiny RoBERTa: what it writes and what it refuses.

Most tests read the session-scoped ``tiny_model_repository``; the ones that must export
again (gate, failures, --force) use small parity samples so each stays a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    RobertaConfig,
)

from emotion_stream.layout import ModelLayout
from exporter import pipeline
from exporter.cli import main as cli_main
from exporter.errors import ExportError, ParityGateError
from exporter.loading import load_model, resolve_model
from exporter.onnx_export import export_fp32
from exporter.optimizing import fuse
from exporter.pipeline import run_export
from exporter.quantizing import KeepFp32, quantize
from exporter.repository import file_sha256
from exporter.runtime import TRITON_MAX_BATCH, Threads, open_session
from tests.support.tiny_model import (
    TINY_LABELS,
    TINY_PARITY_SAMPLE,
    build_tiny_model,
    sample_sentences,
    tiny_export_options,
)

ONNX_TO_TRITON = {onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.FLOAT: "TYPE_FP32"}


@pytest.fixture(scope="module")
def layout(tiny_model_repository: Path) -> ModelLayout:
    return ModelLayout(tiny_model_repository)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def leftovers(repository: Path) -> list[str]:
    """Hidden staging or aside folders an export left in the repository."""
    return [p.name for p in repository.iterdir() if p.name.startswith(".")]


def config_tensors(config_text: str, section: str) -> list[dict[str, str]]:
    """name/data_type/dims of each tensor in the ``input`` or ``output`` section."""
    body = re.search(rf"^{section} \[(.*?)^\]", config_text, re.S | re.M)
    assert body, f"no {section} section"
    return [
        {
            "name": re.search(r'name: "([^"]+)"', block).group(1),  # type: ignore[union-attr]
            "data_type": re.search(r"data_type: (\w+)", block).group(1),  # type: ignore[union-attr]
            "dims": re.search(r"dims: \[([^\]]*)\]", block).group(1).strip(),  # type: ignore[union-attr]
        }
        for block in re.findall(r"\{(.*?)\}", body.group(1), re.S)
    ]


def test_repository_has_the_documented_layout(layout: ModelLayout) -> None:
    for path in (layout.config, layout.labels, layout.report, layout.onnx):
        assert path.is_file(), path
    assert (layout.tokenizer_dir / "tokenizer.json").is_file()
    assert leftovers(layout.repository) == []


def test_onnx_interface_matches_config_pbtxt(layout: ModelLayout) -> None:
    config = layout.config.read_text()
    graph = onnx.load(str(layout.onnx)).graph
    assert f'name: "{layout.name}"' in config
    assert 'platform: "onnxruntime_onnx"' in config
    assert f"max_batch_size: {TRITON_MAX_BATCH}" in config

    declared_inputs = config_tensors(config, "input")
    assert [t["name"] for t in declared_inputs] == [t.name for t in graph.input]
    for declared, tensor in zip(declared_inputs, graph.input, strict=True):
        assert declared["data_type"] == ONNX_TO_TRITON[tensor.type.tensor_type.elem_type]
        assert declared["dims"] == "-1"
        # batch and sequence both dynamic in the graph
        assert all(d.dim_param for d in tensor.type.tensor_type.shape.dim)

    (declared_output,) = config_tensors(config, "output")
    (output,) = graph.output
    assert declared_output["name"] == output.name == "logits"
    assert declared_output["data_type"] == ONNX_TO_TRITON[output.type.tensor_type.elem_type]
    assert declared_output["dims"] == str(len(TINY_LABELS))
    assert output.type.tensor_type.shape.dim[1].dim_value == len(TINY_LABELS)
    assert 'label_filename: "labels.txt"' in config


@pytest.mark.parametrize("batch", [1, TRITON_MAX_BATCH])
@pytest.mark.parametrize("length", [1, 7, 64, 128])
def test_onnxruntime_runs_the_int8_model(layout: ModelLayout, batch: int, length: int) -> None:
    session = open_session(layout.onnx, Threads(intra_op=1, inter_op=1))
    rng = np.random.default_rng(length)
    feeds = {
        "input_ids": rng.integers(3, 900, size=(batch, length), dtype=np.int64),
        "attention_mask": np.ones((batch, length), dtype=np.int64),
    }
    (logits,) = session.run(["logits"], feeds)
    assert logits.shape == (batch, len(TINY_LABELS))
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()


def test_int8_file_is_smaller_and_report_is_complete(layout: ModelLayout) -> None:
    report = json.loads(layout.report.read_text())
    sizes = report["sizes"]
    assert sizes["int8_bytes"] == layout.onnx.stat().st_size
    assert sizes["int8_bytes"] < sizes["fp32_bytes"]
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= set(report["fusions"])
    assert report["quantization"]["int8_operators"]["QAttention"] == 2
    # the embedding tables were quantized too (Gather -> DequantizeLinear)
    assert report["quantization"]["int8_operators"]["DequantizeLinear"] >= 1
    assert report["onnx"]["opset"] >= 14
    parity = report["parity"]
    assert parity["texts"] > 0
    assert 0.0 <= parity["label_agreement"] <= 1.0
    assert 0.0 <= parity["mean_abs_prob_diff"] <= parity["max_abs_prob_diff"] <= 1.0
    assert 0.0 <= parity["fixed_vs_dynamic_agreement"] <= 1.0
    for name in ("fp32", "int8"):
        assert report["speed"][name]["throughput_batch32"] > 0
        assert report["speed"][name]["latency_ms_batch1"] > 0
    assert report["files"]["1/model.onnx"] == file_sha256(layout.onnx)
    assert report["files"]["labels.txt"] == file_sha256(layout.labels)


def test_labels_follow_id2label(layout: ModelLayout, tiny_hf_model: Path) -> None:
    id2label = json.loads((tiny_hf_model / "config.json").read_text())["id2label"]
    assert layout.read_labels() == [id2label[str(i)] for i in range(len(id2label))]
    assert layout.read_labels() == list(TINY_LABELS)


def test_exported_tokenizer_yields_exactly_the_model_inputs(layout: ModelLayout) -> None:
    tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer_dir)
    encoded = tokenizer(sample_sentences(8), padding="longest", return_tensors="np")
    graph_inputs = [t.name for t in onnx.load(str(layout.onnx)).graph.input]
    assert sorted(encoded.keys()) == sorted(graph_inputs)
    assert "token_type_ids" not in encoded
    assert tokenizer.model_max_length == 128
    session = open_session(layout.onnx, Threads(intra_op=1, inter_op=1))
    (logits,) = session.run(["logits"], {k: v.astype(np.int64) for k, v in encoded.items()})
    assert logits.shape == (8, len(TINY_LABELS))


def test_rerun_is_a_noop_and_force_rebuilds(
    tiny_hf_model: Path, tiny_model_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(tiny_model_repository, repository)
    onnx_file = ModelLayout(repository).onnx
    before = onnx_file.stat().st_ino

    again = run_export(tiny_export_options(tiny_hf_model, repository))
    assert again.skipped
    assert onnx_file.stat().st_ino == before

    forced = run_export(tiny_export_options(tiny_hf_model, repository, force=True))
    assert not forced.skipped
    assert onnx_file.stat().st_ino != before
    assert leftovers(repository) == []


def test_cli_reports_up_to_date(
    tiny_hf_model: Path,
    tiny_model_repository: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(tiny_model_repository, repository)
    code = cli_main(
        [
            "--model",
            str(tiny_hf_model),
            "--output",
            str(repository),
            "--min-agreement",
            "0",
            "--max-f1-drop",
            "100",
            "--max-drift",
            "1",
            "--parity-sample",
            str(TINY_PARITY_SAMPLE),
        ]
    )
    assert code == 0
    assert "already up to date" in capsys.readouterr().out


def test_gate_above_the_figures_fails_and_writes_nothing(
    tiny_hf_model: Path, layout: ModelLayout, tmp_path: Path
) -> None:
    agreement = json.loads(layout.report.read_text())["parity"]["label_agreement"]
    assert agreement < 1.0, "the tiny model must disagree somewhere for this test to mean anything"
    repository = tmp_path / "fresh" / "repo"
    with pytest.raises(ParityGateError, match=r"label agreement .*% < 100\.00%"):
        run_export(tiny_export_options(tiny_hf_model, repository, min_agreement=1.0))
    assert not (tmp_path / "fresh").exists()


def test_f1_gate_with_eval_file_fails_with_figures(
    tiny_hf_model: Path, tiny_model_repository: Path, tmp_path: Path
) -> None:
    eval_file = tmp_path / "eval.jsonl"
    rows = [{"text": t, "label": TINY_LABELS[i % 4]} for i, t in enumerate(sample_sentences(40))]
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    repository = tmp_path / "repo"
    shutil.copytree(tiny_model_repository, repository)
    before = tree_hashes(repository)
    # a drop of -100 points would need INT8 to gain 100 macro-F1 points: never passes
    with pytest.raises(ParityGateError, match=r"macro-F1 drop .* > -100\.00 \(FP32 0\.\d+, INT8"):
        run_export(
            tiny_export_options(
                tiny_hf_model, repository, eval_file=eval_file, max_f1_drop=-100.0, force=True
            )
        )
    assert tree_hashes(repository) == before
    assert leftovers(repository) == []


def test_failure_mid_write_leaves_the_earlier_repository_intact(
    tiny_hf_model: Path,
    tiny_model_repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(tiny_model_repository, repository)
    before = tree_hashes(repository)

    def crash(labels: list[str]) -> str:
        raise OSError("disk full (injected)")

    # labels.txt is written after the model file and the tokenizer: the staging folder is half full
    monkeypatch.setattr(pipeline, "labels_txt", crash)
    with pytest.raises(OSError, match="injected"):
        run_export(tiny_export_options(tiny_hf_model, repository, force=True))
    assert tree_hashes(repository) == before
    assert leftovers(repository) == []


def test_leftovers_of_a_killed_export_are_recovered(
    tiny_hf_model: Path, tiny_model_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(tiny_model_repository, repository)
    before = tree_hashes(repository)
    # killed between the two renames: the model folder is aside, a half build is staged
    layout = ModelLayout(repository)
    os.rename(layout.model_dir, repository / ".emotion-classifier.old-dead")
    (repository / ".emotion-classifier.tmp-dead").mkdir()
    (repository / ".emotion-classifier.tmp-dead" / "config.pbtxt").write_text("half")

    outcome = run_export(tiny_export_options(tiny_hf_model, repository))
    assert outcome.skipped  # the restored folder is the same export
    assert tree_hashes(repository) == before
    assert leftovers(repository) == []


def test_missing_id2label_falls_back_to_label_n(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = build_tiny_model(tmp_path / "unlabelled", with_labels=False)
    with caplog.at_level(logging.WARNING, logger="exporter"):
        outcome = run_export(tiny_export_options(model_dir, tmp_path / "repo", parity_sample=16))
    assert outcome.layout.read_labels() == ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]
    assert outcome.report["model"]["labels_defaulted"] is True
    assert "no id2label" in caplog.text


def test_bert_family_is_rejected(tmp_path: Path) -> None:
    model_dir = tmp_path / "bert"
    model_dir.mkdir()
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *sorted(set(" ".join(sample_sentences(50)).split())),
    ]
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(model_dir / "vocab.txt")).save_pretrained(str(model_dir))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=4,
    )
    BertForSequenceClassification(config).save_pretrained(str(model_dir))
    repository = tmp_path / "repo"
    with pytest.raises(ExportError, match=r"token_type_ids .*only RoBERTa-family"):
        run_export(tiny_export_options(model_dir, repository))
    assert not repository.exists()


def test_not_a_sequence_classifier_is_rejected(tmp_path: Path) -> None:
    RobertaConfig(architectures=["RobertaModel"]).save_pretrained(str(tmp_path / "base"))
    with pytest.raises(ExportError, match=r"not a sequence classifier .*RobertaModel"):
        run_export(tiny_export_options(tmp_path / "base", tmp_path / "repo"))


def test_missing_local_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"no config\.json"):
        run_export(tiny_export_options(tmp_path / "nowhere", tmp_path / "repo"))


def test_unwritable_output_is_a_clear_error(tiny_hf_model: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot write the model repository"):
        run_export(tiny_export_options(tiny_hf_model, blocker / "repo"))
    assert blocker.read_text() == "not a folder"


def test_unknown_hub_id_offline_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--model",
            "no-such-org/no-such-model",
            "--output",
            str(tmp_path / "repo"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    # progress lines may precede it; the error itself is one line, and the last
    errors = [line for line in result.stderr.splitlines() if "emotion-stream export:" in line]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().endswith(errors[0])
    assert "no-such-org/no-such-model" in errors[0]
    assert "--model /path/to/model" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "repo").exists()


@pytest.fixture(scope="module")
def tiny_fused(tiny_hf_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's fused FP32 graph, through the exporter's own stages."""
    work = tmp_path_factory.mktemp("stages")
    loaded = load_model(resolve_model(str(tiny_hf_model), None))
    fp32 = export_fp32(loaded, work)
    return fuse(fp32, work, loaded.num_heads, loaded.hidden_size).path


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        ("none", set()),
        ("classifier", {"/classifier/dense/Gemm_MatMul", "/classifier/out_proj/Gemm_MatMul"}),
        ("embeddings", {"/roberta/embeddings/word_embeddings/Gather"}),
        ("last-layer", {"Attention_1", "/roberta/encoder/layer.1/output/dense/MatMul"}),
    ],
)
def test_keep_fp32_leaves_the_chosen_nodes_unquantized(
    tiny_fused: Path, tmp_path: Path, keep: KeepFp32, expected: set[str]
) -> None:
    int8, choice, _ = quantize(tiny_fused, tmp_path, keep)
    assert expected <= set(choice.nodes_kept_fp32)
    names = {node.name for node in onnx.load(str(int8)).graph.node}
    # the kept nodes are still there under their own names, not replaced by *_quant
    assert expected <= names
    if keep == "last-layer":
        assert "Attention_0" not in choice.nodes_kept_fp32
        assert "/roberta/encoder/layer.0/output/dense/MatMul" not in choice.nodes_kept_fp32
