"""Error taxonomy at the Triton boundary, softmax and labels, batch bisection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from emotion_stream.layout import ModelLayout
from worker.errors import (
    FatalError,
    InferenceRejected,
    InferenceUnavailable,
    ModelMismatch,
    PoisonMessage,
    TransientError,
)
from worker.inference import (
    Classified,
    ModelSpec,
    TritonClassifier,
    classify_isolating_rejects,
    classify_planned,
    describe_change,
    label_scores,
    parse_model_config,
    softmax,
    translate_error,
)
from worker.tokenizing import EncodedBatch, PlannedBatch

LABELS = ["anger", "joy", "optimism", "sadness"]
CONFIG = {
    "config": {
        "name": "emotion-classifier",
        "max_batch_size": 16,
        "input": [
            {"name": "input_ids", "data_type": "TYPE_INT64", "dims": ["-1"]},
            {"name": "attention_mask", "data_type": "TYPE_INT64", "dims": ["-1"]},
        ],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["4"]}],
    }
}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("StatusCode.INVALID_ARGUMENT", InferenceRejected),
        ("StatusCode.UNAVAILABLE", InferenceUnavailable),
        ("StatusCode.DEADLINE_EXCEEDED", InferenceUnavailable),
        ("StatusCode.NOT_FOUND", InferenceUnavailable),  # model unloaded
        ("StatusCode.RESOURCE_EXHAUSTED", InferenceUnavailable),
        ("StatusCode.INTERNAL", InferenceUnavailable),
        ("StatusCode.CANCELLED", InferenceUnavailable),
        (None, InferenceUnavailable),
        ("StatusCode.UNAUTHENTICATED", FatalError),
        ("StatusCode.UNIMPLEMENTED", FatalError),
    ],
)
def test_triton_errors_translate_by_status(status: str | None, kind: type[Exception]) -> None:
    error = translate_error(InferenceServerException(msg="boom", status=status))
    assert type(error) is kind
    assert "boom" in str(error)


def test_rejection_is_poison_and_unavailability_transient() -> None:
    rejected = translate_error(InferenceServerException("bad", "StatusCode.INVALID_ARGUMENT"))
    unavailable = translate_error(InferenceServerException("down", "StatusCode.UNAVAILABLE"))
    assert isinstance(rejected, PoisonMessage)
    assert isinstance(unavailable, TransientError)


def test_connection_refused_is_transient() -> None:
    assert isinstance(translate_error(ConnectionRefusedError("refused")), TransientError)


def test_softmax_rows_sum_to_one_and_keep_order() -> None:
    logits = np.array([[1.0, 2.0, 3.0, 4.0], [1000.0, 0.0, -1000.0, 5.0]], dtype=np.float32)
    probabilities = softmax(logits)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert list(np.argmax(probabilities, axis=1)) == [3, 0]
    assert np.isfinite(probabilities).all()


def test_labels_come_from_labels_txt_in_model_order(tmp_path: Path) -> None:
    layout = ModelLayout(tmp_path)
    layout.model_dir.mkdir(parents=True)
    layout.labels.write_text("sadness\njoy\n\nanger\noptimism\n", encoding="utf-8")
    labels = layout.read_labels()
    scores = label_scores(np.array([0.1, 0.2, 0.3, 0.4]), labels)
    assert list(scores) == ["sadness", "joy", "anger", "optimism"]
    assert scores["optimism"] == pytest.approx(0.4)
    with pytest.raises(ValueError):
        label_scores(np.array([0.5, 0.5]), labels)


def test_model_config_is_checked() -> None:
    spec = parse_model_config(CONFIG)
    assert spec.max_batch_size == 16
    assert spec.num_labels == 4
    broken = {"config": {**CONFIG["config"], "input": CONFIG["config"]["input"][:1]}}
    with pytest.raises(ModelMismatch, match="attention_mask"):
        parse_model_config(broken)
    no_logits = {"config": {**CONFIG["config"], "output": [{"name": "probs", "dims": ["4"]}]}}
    with pytest.raises(ModelMismatch, match="logits"):
        parse_model_config(no_logits)


def encoded(rows: int, width: int = 6) -> EncodedBatch:
    ids = np.arange(rows * width, dtype=np.int64).reshape(rows, width)
    mask = np.ones((rows, width), dtype=np.int64)
    return EncodedBatch(ids, mask)


class RejectsRows:
    """Fake Triton: rejects any request containing a poisoned first token."""

    def __init__(self, poisoned: set[int]) -> None:
        self.poisoned = poisoned
        self.calls: list[int] = []

    def __call__(self, batch: EncodedBatch) -> Classified:
        self.calls.append(len(batch))
        if self.poisoned & set(batch.input_ids[:, 0].tolist()):
            raise InferenceRejected("StatusCode.INVALID_ARGUMENT", "bad token")
        logits = batch.input_ids[:, :4].astype(np.float32) / 100
        return Classified(softmax(logits), "1")


def test_bisect_isolates_the_rejected_items() -> None:
    batch = encoded(8)
    poisoned = {int(batch.input_ids[2, 0]), int(batch.input_ids[7, 0])}
    fake = RejectsRows(poisoned)
    outcomes, version = classify_isolating_rejects(fake, batch)
    assert version == "1"
    assert len(outcomes) == 8
    rejected = [i for i, o in enumerate(outcomes) if isinstance(o, InferenceRejected)]
    assert rejected == [2, 7]
    for i, outcome in enumerate(outcomes):
        if i not in rejected:
            assert isinstance(outcome, np.ndarray)
            assert outcome.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(fake.calls) < 2 * 8  # bisection, not one call per item


def test_good_batch_is_one_call() -> None:
    fake = RejectsRows(set())
    outcomes, _ = classify_isolating_rejects(fake, encoded(5))
    assert fake.calls == [5]
    assert len(outcomes) == 5


def test_transient_error_during_bisection_propagates() -> None:
    calls = 0

    def flaky(batch: EncodedBatch) -> Classified:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise InferenceRejected("StatusCode.INVALID_ARGUMENT", "x")
        raise InferenceUnavailable("StatusCode.UNAVAILABLE", "gone")

    with pytest.raises(InferenceUnavailable):
        classify_isolating_rejects(flaky, encoded(4))


def test_sub_batches_trim_dynamic_padding() -> None:
    ids = np.array([[0, 5, 2, 1, 1], [0, 6, 7, 8, 2]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int64)
    first = EncodedBatch(ids, mask).rows(0, 1)
    assert first.input_ids.tolist() == [[0, 5, 2]]
    fixed = EncodedBatch(ids, mask, fixed_length=True).rows(0, 1)
    assert fixed.tokens == 5
    ids8 = np.zeros((2, 16), dtype=np.int64)
    mask8 = np.zeros((2, 16), dtype=np.int64)
    mask8[0, :3] = 1
    mask8[1, :16] = 1
    assert EncodedBatch(ids8, mask8, pad_multiple=8).rows(0, 1).tokens == 8


def planned(*groups: tuple[int, ...]) -> PlannedBatch:
    """Requests carrying the batch's rows in the order given; row i's first token is 100 + i."""
    size = sum(len(g) for g in groups)
    requests = []
    for group in groups:
        ids = np.array([[100 + i, 1, 2, 3, 4, 5] for i in group], dtype=np.int64)
        requests.append((group, EncodedBatch(ids, np.ones_like(ids))))
    return PlannedBatch(size, tuple(requests))


def test_planned_outcomes_come_back_in_batch_order() -> None:
    fake = RejectsRows({105})
    outcomes, version = classify_planned(fake, planned((3, 0, 5), (1, 4), (2,)))
    assert version == "1"
    assert fake.calls[0] == 3 and len(outcomes) == 6
    for index, outcome in enumerate(outcomes):
        if index == 5:
            assert isinstance(outcome, InferenceRejected)  # isolated within its request
            continue
        assert isinstance(outcome, np.ndarray)
        row = np.array([100 + index, 1, 2, 3], dtype=np.float32) / 100
        assert outcome.tolist() == pytest.approx(softmax(row[None, :])[0].tolist())


def test_a_transient_error_in_any_request_fails_the_whole_batch() -> None:
    calls = 0

    def second_fails(batch: EncodedBatch) -> Classified:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise InferenceUnavailable("StatusCode.UNAVAILABLE", "gone")
        return RejectsRows(set())(batch)

    with pytest.raises(InferenceUnavailable):
        classify_planned(second_fails, planned((0,), (1,), (2,)))


class FakeResult:
    def __init__(self, logits: np.ndarray) -> None:
        self._logits = logits

    def as_numpy(self, name: str) -> np.ndarray:
        assert name == "logits"
        return self._logits

    def get_response(self) -> Any:
        class Response:
            model_version = "1"

        return Response()


class FakeClient:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.requests: list[Any] = []

    def get_model_config(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return CONFIG

    def infer(self, name: str, inputs: list[Any], **kwargs: Any) -> FakeResult:
        if self.error:
            raise self.error
        self.requests.append((inputs, kwargs))
        rows = inputs[0].shape()[0]
        return FakeResult(np.zeros((rows, 4), dtype=np.float32))

    def is_server_ready(self, **kwargs: Any) -> bool:
        return True

    def is_model_ready(self, name: str, **kwargs: Any) -> bool:
        return False


def test_classifier_sends_the_declared_inputs_with_a_deadline() -> None:
    client = FakeClient()
    classifier = TritonClassifier(client, "emotion-classifier", timeout_s=3.0)
    classifier.load_spec()
    result = classifier.classify(encoded(3))
    np.testing.assert_allclose(result.probabilities, 0.25)
    assert result.model_version == "1"
    inputs, kwargs = client.requests[0]
    assert [i.name() for i in inputs] == ["input_ids", "attention_mask"]
    assert [i.datatype() for i in inputs] == ["INT64", "INT64"]
    assert kwargs["client_timeout"] == 3.0


def test_classifier_translates_rpc_errors_once() -> None:
    error = InferenceServerException("no", "StatusCode.UNAVAILABLE")
    classifier = TritonClassifier(FakeClient(error), "emotion-classifier")
    classifier.load_spec()
    with pytest.raises(InferenceUnavailable) as caught:
        classifier.classify(encoded(2))
    assert caught.value.__cause__ is error


def test_model_not_ready_is_transient() -> None:
    with pytest.raises(InferenceUnavailable, match="model not ready"):
        TritonClassifier(FakeClient(), "emotion-classifier").ensure_ready()


def test_a_request_rejected_item_by_item_asks_before_its_outcomes_are_returned() -> None:
    asked: list[str] = []
    # Rows 100-102 in one request, 103-104 in another; all of the first is rejected.
    fake = RejectsRows({100, 101, 102, 104})
    outcomes, _ = classify_planned(fake, planned((0, 1, 2), (3, 4)), lambda: asked.append("?"))
    assert asked == ["?"]  # the first request only: the second had an accepted row
    assert [isinstance(o, InferenceRejected) for o in outcomes] == [True] * 3 + [False, True]

    def model_changed() -> None:
        raise InferenceUnavailable("model changed", "retry")

    with pytest.raises(InferenceUnavailable):
        classify_planned(RejectsRows({100}), planned((0,)), model_changed)
    assert classify_planned(RejectsRows(set()), planned((0,)), model_changed)[1] == "1"


def test_describe_change_names_each_difference() -> None:
    old = ModelSpec("m", 32, {"input_ids": "TYPE_INT64"}, 6)
    assert describe_change(old, old) is None
    new = ModelSpec("m", 16, {"input_ids": "TYPE_INT32"}, 4)
    said = describe_change(old, new) or ""
    assert "TYPE_INT64" in said and "TYPE_INT32" in said
    assert "max_batch_size 32 -> 16" in said and "labels 6 -> 4" in said
