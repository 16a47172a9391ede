"""A model that changes under a running worker: every text of a request rejected is the
model's doing, not the texts' — the worker re-reads the model's metadata and adapts (only
input types changed) or stops, instead of dead-lettering and committing the stream."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.support.fakes import LABELS, FakeClassifier, record, tweets, wait_for
from worker.errors import InferenceRejected, ModelChanged, ModelMismatch
from worker.inference import Classified, ModelSpec
from worker.tokenizing import EncodedBatch

OLD_INPUTS = {"input_ids": "TYPE_INT64", "attention_mask": "TYPE_INT64"}
NEW_INPUTS = {"input_ids": "TYPE_INT32", "attention_mask": "TYPE_INT32"}


class ReloadedClassifier(FakeClassifier):
    """Triton serving a model that is replaced after ``serve_first`` requests: from then
    on it rejects every request (INVALID_ARGUMENT, as Triton does for inputs of another
    name or type) until the worker has re-read the new spec, if the new one fits at all."""

    def __init__(
        self, serve_first: int, new: ModelSpec | ModelMismatch, *, serves_new: bool = True
    ) -> None:
        super().__init__()
        self.serve_first = serve_first
        self.new = new
        self.serves_new = serves_new
        self.requests = 0
        self.spec_reads = 0
        self.adapted = threading.Event()

    @property
    def replaced(self) -> bool:
        return self.requests > self.serve_first

    def load_spec(self) -> ModelSpec:
        with self.lock:
            self.spec_reads += 1
            if not self.replaced:
                return ModelSpec("emotion-classifier", self.max_batch_size, OLD_INPUTS, 4)
            if isinstance(self.new, ModelMismatch):
                raise self.new
            self.adapted.set()
            return self.new

    def classify(self, batch: EncodedBatch) -> Classified:
        with self.lock:
            self.requests += 1
            rejected = self.replaced and not (self.adapted.is_set() and self.serves_new)
        if rejected:
            raise InferenceRejected("StatusCode.INVALID_ARGUMENT", "unexpected datatype")
        return super().classify(batch)


def test_a_model_replaced_by_one_with_other_inputs_stops_the_worker_not_the_stream(
    run_worker: Any,
) -> None:
    classifier = ReloadedClassifier(
        serve_first=2,
        new=ModelMismatch("emotion-classifier", "no input 'attention_mask' (inputs: ['mask'])"),
    )
    h = run_worker({("tweets", 0): tweets(0, 60)}, classifier, max_batch_size=8)
    h.thread.join(30)
    assert not h.thread.is_alive(), "the worker should have stopped"
    assert isinstance(h.error, ModelChanged), h.error
    assert "changed while the worker ran" in str(h.error)
    assert "no input 'attention_mask'" in str(h.error)
    assert h.dead_letters() == []  # nothing dead-lettered for the model's change
    # Nothing committed past what was classified before the change.
    committed = h.source.committed().get(("tweets", 0), 0)
    assert committed <= len(h.outputs()) < 60


@pytest.mark.parametrize(
    ("max_batch_size", "labels", "said"),
    [(16, len(LABELS), "max_batch_size 64 -> 16"), (64, 6, "labels 4 -> 6")],
)
def test_a_model_whose_batch_limit_or_labels_changed_stops_the_worker(
    run_worker: Any, max_batch_size: int, labels: int, said: str
) -> None:
    classifier = ReloadedClassifier(
        serve_first=1,
        new=ModelSpec("emotion-classifier", max_batch_size, OLD_INPUTS, labels),
        serves_new=False,
    )
    h = run_worker({("tweets", 0): tweets(0, 40)}, classifier, max_batch_size=8)
    h.thread.join(30)
    assert isinstance(h.error, ModelChanged), h.error
    assert said in str(h.error)
    assert h.dead_letters() == []


def test_a_model_whose_input_types_changed_is_adapted_to_without_dead_letters(
    run_worker: Any,
) -> None:
    classifier = ReloadedClassifier(
        serve_first=2, new=ModelSpec("emotion-classifier", 64, NEW_INPUTS, len(LABELS))
    )
    h = run_worker({("tweets", 0): tweets(0, 60)}, classifier, max_batch_size=8)
    wait_for(lambda: h.source.committed() == {("tweets", 0): 60}, "all committed")
    h.stop()
    assert classifier.adapted.is_set()
    assert sorted(o["id"] for o in h.outputs()) == sorted(f"p0-{n}" for n in range(60))
    assert h.dead_letters() == []
    retries = h.worker.metrics.retries.labels(reason="ModelInputsChanged")._value.get()
    assert retries >= 1


def test_texts_the_unchanged_model_rejects_are_still_dead_lettered(run_worker: Any) -> None:
    # The same spec on re-reading: the rejections are the texts' own (test_app's fake
    # rejects any text containing POISON), so they are dead-lettered as before.
    classifier = ReloadedClassifier(serve_first=10**9, new=ModelSpec("x", 1, {}, 1))
    poison = [record(0, n, b'{"id": "p", "text": "POISON for the model"}') for n in range(3)]
    h = run_worker({("tweets", 0): poison}, classifier, max_batch_size=8)
    wait_for(lambda: h.source.committed() == {("tweets", 0): 3}, "all committed")
    h.stop()
    assert len(h.dead_letters()) == 3 and h.outputs() == []
    assert classifier.spec_reads >= 2  # start-up, and the re-read that found no change


class ReloadedDuringABisection(ReloadedClassifier):
    """The model is replaced before any request; the first batch rejected is bisected
    under the old inputs until ``stall_after`` of its requests were rejected, then waits
    until the other batch's thread has adapted the worker to the new inputs: its remaining
    requests succeed, so it ends with some texts rejected and some classified."""

    def __init__(self, stall_after: int) -> None:
        super().__init__(serve_first=0, new=ModelSpec("emotion-classifier", 64, NEW_INPUTS, 4))
        self.stall_after = stall_after
        self.stalled: int | None = None  # the stalled thread's ident
        self.rejected_in_stalled = 0
        self.adapted_during_the_stall = False

    def classify(self, batch: EncodedBatch) -> Classified:
        me = threading.get_ident()
        with self.lock:
            if self.stalled is None and not self.adapted.is_set():
                self.stalled = me
            stall = me == self.stalled and self.rejected_in_stalled == self.stall_after
        if stall:
            # Bounded: the other inference thread adapts within a few rejected requests.
            self.adapted_during_the_stall = self.adapted.wait(20)
        try:
            return super().classify(batch)
        except InferenceRejected:
            if me == self.stalled:
                with self.lock:
                    self.rejected_in_stalled += 1
            raise


def test_rejections_seen_before_another_thread_adapted_the_inputs_are_retried_not_dead_lettered(
    run_worker: Any,
) -> None:
    # Eight texts bisect as [0-8] [0-4] [0-2] [0] [1] [2-4] ...: after five rejected
    # requests texts 0 and 1 stand rejected alone, and the rest would be classified after
    # the other thread adapted: a mixed batch whose rejections are the model's doing.
    classifier = ReloadedDuringABisection(stall_after=5)
    h = run_worker(
        {("tweets", 0): tweets(0, 16)}, classifier, max_batch_size=8, max_batch_wait_ms=200
    )
    wait_for(lambda: h.source.committed() == {("tweets", 0): 16}, "all committed")
    h.stop()
    assert classifier.adapted_during_the_stall, "the race was not staged"
    assert h.dead_letters() == []
    assert sorted(o["id"] for o in h.outputs()) == sorted(f"p0-{n}" for n in range(16))
