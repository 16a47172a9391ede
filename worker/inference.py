"""Classification through Triton's gRPC API; the only module that imports ``tritonclient``.

Every RPC error is translated once, here, into the worker's taxonomy
(:func:`translate_error`): a request Triton *rejects* (``INVALID_ARGUMENT``) is
poison for the items in it; everything that says "not now" (unavailable, model not
ready or unloaded, deadline, overloaded) is transient. Callers never see a
``tritonclient`` or ``grpc`` type.

When a batch is rejected, :func:`classify_isolating_rejects` bisects it so only the
rejected item is dead-lettered and its batch-mates are still classified;
:func:`classify_planned` runs a batch's requests (see :meth:`TweetTokenizer.plan
<worker.tokenizing.TweetTokenizer.plan>`) that way and puts the outcomes back in the
batch's order. A request rejected item by item is what a model whose inputs changed under
the worker looks like: the caller's ``on_all_rejected`` re-reads the model's metadata
before any of it is dead-lettered (:func:`describe_change`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from emotion_stream.layout import ATTENTION_MASK, INPUT_IDS, LOGITS
from worker.errors import (
    FatalError,
    InferenceRejected,
    InferenceUnavailable,
    ModelMismatch,
    WorkerError,
)
from worker.tokenizing import EncodedBatch, PlannedBatch

Probabilities = npt.NDArray[np.float32]

# gRPC status codes (as tritonclient spells them) by what they mean for a request.
REJECTED_STATUSES = frozenset({"StatusCode.INVALID_ARGUMENT", "StatusCode.OUT_OF_RANGE"})
FATAL_STATUSES = frozenset(
    {"StatusCode.UNAUTHENTICATED", "StatusCode.PERMISSION_DENIED", "StatusCode.UNIMPLEMENTED"}
)
# Everything else — UNAVAILABLE, DEADLINE_EXCEEDED, NOT_FOUND (model unloaded),
# RESOURCE_EXHAUSTED, ABORTED, CANCELLED, INTERNAL, UNKNOWN, no status — is transient:
# retrying a request the server could not serve must never lose or dead-letter it.

_NUMPY_DTYPES = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32}
_TRITON_DTYPES = {"TYPE_INT64": "INT64", "TYPE_INT32": "INT32"}


def translate_error(exc: BaseException) -> WorkerError:
    """The worker error for an exception raised by tritonclient or grpc.

    Raises nothing; returns :class:`InferenceRejected` (poison),
    :class:`InferenceUnavailable` (transient) or :class:`FatalError`.
    """
    if isinstance(exc, WorkerError):
        return exc
    if isinstance(exc, InferenceServerException):
        status = exc.status() or "no status"
        detail = exc.message() or str(exc)
    else:
        code = getattr(exc, "code", None)
        status = str(code()) if callable(code) else type(exc).__name__
        details = getattr(exc, "details", None)
        detail = str(details()) if callable(details) else str(exc)
    if status in REJECTED_STATUSES:
        return InferenceRejected(status, detail)
    if status in FATAL_STATUSES:
        return FatalError(f"Triton refused the request ({status}): {detail}")
    return InferenceUnavailable(status, detail)


def softmax(logits: npt.NDArray[Any]) -> Probabilities:
    """Row-wise softmax, stable for large logits; rows sum to 1."""
    values = np.asarray(logits, dtype=np.float64)
    shifted = values - values.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: Probabilities = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return probabilities


def label_scores(probabilities: npt.NDArray[Any], labels: list[str]) -> dict[str, float]:
    """One row of probabilities as ``{label: probability}`` in the model's label order."""
    return {label: float(p) for label, p in zip(labels, probabilities, strict=True)}


@dataclass(frozen=True)
class ModelSpec:
    """What the served model accepts, read from Triton's model configuration."""

    name: str
    max_batch_size: int
    """0 means the model does not batch; the worker then sends one item per request."""
    input_types: dict[str, str]
    num_labels: int


@dataclass(frozen=True)
class Classified:
    """Probabilities for a batch and the model version that produced them."""

    probabilities: Probabilities
    model_version: str


def describe_change(before: ModelSpec, after: ModelSpec) -> str | None:
    """What differs between two specs of the served model, in words; None if nothing."""
    changes = []
    if before.input_types != after.input_types:
        changes.append(f"inputs {before.input_types} -> {after.input_types}")
    if before.max_batch_size != after.max_batch_size:
        changes.append(f"max_batch_size {before.max_batch_size} -> {after.max_batch_size}")
    if before.num_labels != after.num_labels:
        changes.append(f"labels {before.num_labels} -> {after.num_labels}")
    return "; ".join(changes) or None


def parse_model_config(config: dict[str, Any]) -> ModelSpec:
    """Check a model config (Triton's JSON form) against what the worker sends.

    Raises
    ------
    ModelMismatch
        If the inputs, their types or the logits output are not what the worker uses.
    """
    config = config.get("config", config)
    name = str(config.get("name", "?"))
    inputs = {str(i["name"]): str(i.get("data_type", "")) for i in config.get("input", [])}
    for needed in (INPUT_IDS, ATTENTION_MASK):
        if needed not in inputs:
            raise ModelMismatch(name, f"no input {needed!r} (inputs: {sorted(inputs)})")
        if inputs[needed] not in _NUMPY_DTYPES:
            raise ModelMismatch(name, f"input {needed!r} has type {inputs[needed]}, not INT64/32")
    outputs = {str(o["name"]): o for o in config.get("output", [])}
    if LOGITS not in outputs:
        raise ModelMismatch(name, f"no output {LOGITS!r} (outputs: {sorted(outputs)})")
    dims = [int(d) for d in outputs[LOGITS].get("dims", [])]
    if not dims or dims[-1] <= 0:
        raise ModelMismatch(name, f"output {LOGITS!r} has no fixed label dimension: {dims}")
    return ModelSpec(
        name=name,
        max_batch_size=int(config.get("max_batch_size", 0)),
        input_types={k: inputs[k] for k in (INPUT_IDS, ATTENTION_MASK)},
        num_labels=dims[-1],
    )


class TritonClassifier:
    """Sends encoded batches to one Triton model and returns softmax probabilities.

    Thread-safe: tritonclient's gRPC ``infer`` may be called from several threads,
    which is how the worker keeps more than one batch in flight.
    """

    def __init__(
        self,
        client: Any,
        model_name: str,
        model_version: str = "",
        timeout_s: float = 10.0,
    ) -> None:
        self._client = client
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = timeout_s
        self._spec: ModelSpec | None = None

    @classmethod
    def connect(
        cls,
        url: str,
        model_name: str,
        model_version: str = "",
        timeout_s: float = 10.0,
        *,
        ssl: bool = False,
        root_certificates: Path | None = None,
        private_key: Path | None = None,
        certificate_chain: Path | None = None,
    ) -> TritonClassifier:
        """A classifier over a new gRPC channel (no RPC is made yet)."""
        client = grpcclient.InferenceServerClient(
            url=url,
            ssl=ssl,
            root_certificates=str(root_certificates) if root_certificates else None,
            private_key=str(private_key) if private_key else None,
            certificate_chain=str(certificate_chain) if certificate_chain else None,
        )
        return cls(client, model_name, model_version, timeout_s)

    def close(self) -> None:
        self._client.close()

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, client_timeout=self.timeout_s, **kwargs)
        except Exception as exc:
            raise translate_error(exc) from exc

    def ensure_ready(self) -> None:
        """Return if the model can serve now.

        Raises
        ------
        InferenceUnavailable
            Triton unreachable, not ready, or the model not loaded (transient).
        """
        if not self._call(self._client.is_server_ready):
            raise InferenceUnavailable("server not ready", "Triton is starting or stopping")
        if not self._call(
            self._client.is_model_ready, self.model_name, model_version=self.model_version
        ):
            raise InferenceUnavailable(
                "model not ready", f"{self.model_name!r} version {self.model_version or 'latest'}"
            )

    def load_spec(self) -> ModelSpec:
        """Read and check the model's configuration (inputs, batch limit, labels).

        Raises
        ------
        InferenceUnavailable, ModelMismatch
        """
        config = self._call(
            self._client.get_model_config,
            self.model_name,
            model_version=self.model_version,
            as_json=True,
        )
        self._spec = parse_model_config(config)
        return self._spec

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:
            raise RuntimeError("load_spec() first")
        return self._spec

    def classify(self, batch: EncodedBatch) -> Classified:
        """Probabilities ``[len(batch), num_labels]`` for an encoded batch.

        Raises
        ------
        InferenceRejected
            Triton refused the request (INVALID_ARGUMENT).
        InferenceUnavailable
            Triton cannot serve now; retry later.
        """
        spec = self.spec
        inputs = []
        for name, values in ((INPUT_IDS, batch.input_ids), (ATTENTION_MASK, batch.attention_mask)):
            tensor = np.ascontiguousarray(values, dtype=_NUMPY_DTYPES[spec.input_types[name]])
            request_input = grpcclient.InferInput(
                name, list(tensor.shape), _TRITON_DTYPES[spec.input_types[name]]
            )
            request_input.set_data_from_numpy(tensor)
            inputs.append(request_input)
        result = self._call(
            self._client.infer,
            self.model_name,
            inputs,
            model_version=self.model_version,
            outputs=[grpcclient.InferRequestedOutput(LOGITS)],
        )
        logits = result.as_numpy(LOGITS)
        if logits is None or logits.shape != (len(batch), spec.num_labels):
            shape = None if logits is None else logits.shape
            raise ModelMismatch(
                self.model_name, f"logits of shape {shape} for a batch of {len(batch)}"
            )
        version = str(result.get_response().model_version or self.model_version)
        return Classified(softmax(logits), version)


Outcome = npt.NDArray[np.float32] | InferenceRejected


def classify_isolating_rejects(
    classify: Callable[[EncodedBatch], Classified], batch: EncodedBatch
) -> tuple[list[Outcome], str]:
    """Classify a batch; if Triton rejects it, bisect until each rejected item is alone.

    Returns one outcome per item, in order — a probability row or the rejection for
    that item — and the model version that answered ("" if no sub-batch was accepted).
    Transient errors propagate: the whole batch is then retried by the caller.
    """
    outcomes: list[Outcome | None] = [None] * len(batch)
    version = ""

    def run(start: int, stop: int) -> None:
        nonlocal version
        try:
            whole = (start, stop) == (0, len(batch))
            answer = classify(batch if whole else batch.rows(start, stop))
        except InferenceRejected as rejected:
            if stop - start == 1:
                outcomes[start] = rejected
                return
            middle = (start + stop) // 2
            run(start, middle)
            run(middle, stop)
            return
        version = answer.model_version
        for row, probabilities in enumerate(answer.probabilities):
            outcomes[start + row] = probabilities

    if len(batch):
        run(0, len(batch))
    return [outcome for outcome in outcomes if outcome is not None], version


def classify_planned(
    classify: Callable[[EncodedBatch], Classified],
    planned: PlannedBatch,
    on_all_rejected: Callable[[], None] | None = None,
) -> tuple[list[Outcome], str]:
    """Classify every request of a planned batch; outcomes in the batch's (arrival) order.

    Each request is classified with :func:`classify_isolating_rejects`, so a rejected text
    is isolated within its request. When every text of a request was rejected, one by
    one, ``on_all_rejected`` is called before anything is returned: it raises if the
    rejections are the model's doing, not the texts'. Transient errors propagate: the
    caller retries the whole batch (requests that had succeeded are sent again; results
    go out only once).
    """
    outcomes: list[Outcome | None] = [None] * planned.size
    version = ""
    for indices, encoded in planned.requests:
        answered, answered_version = classify_isolating_rejects(classify, encoded)
        if (
            on_all_rejected is not None
            and answered
            and all(isinstance(outcome, InferenceRejected) for outcome in answered)
        ):
            on_all_rejected()
        version = answered_version or version
        for index, outcome in zip(indices, answered, strict=True):
            outcomes[index] = outcome
    missing = [index for index, outcome in enumerate(outcomes) if outcome is None]
    if missing:
        raise RuntimeError(f"the plan left texts {missing[:5]} of {planned.size} unclassified")
    return [outcome for outcome in outcomes if outcome is not None], version
