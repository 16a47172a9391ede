"""Triton Python-backend twin of an ``onnxruntime_onnx`` model: same inputs, outputs, batch.

pytriton's ``tritonserver`` carries the Python backend only, so the embedded stack serves the
exporter's ``model.onnx`` through this model: onnxruntime runs the very same file (the twin's
``<version>/model.onnx`` is a symbolic link to it), one ``InferenceSession`` per model
instance.

Triton hands ``execute`` a list of requests (several when dynamic batching merges them);
each request carries its own batch dimension and gets exactly one response, an error
response for that request alone when its inputs are invalid. Checks mirror what the ONNX
model would reject or silently get wrong: shapes, dtypes, token ids outside the vocabulary
and sequences longer than the model's positions (limits are config parameters that the
twin generator reads from the ONNX graph).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

try:  # Inside Triton; unit tests import the checks without it.
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - exercised only outside Triton
    pb_utils = None

# Config parameter keys written by compose/twin.py (string values, as Triton stores them).
PARAM_INTRA_OP_THREADS = "intra_op_thread_count"
PARAM_INTER_OP_THREADS = "inter_op_thread_count"
PARAM_VOCAB_SIZE = "vocab_size"
PARAM_MAX_SEQUENCE_LENGTH = "max_sequence_length"
# Fault injection for tests only (the exporter never writes it, Triton's onnxruntime backend
# has no such thing): every execute() waits this long first, a model slower than the
# consumer's max.poll.interval without a model that big (tests/support/fault_services.py).
PARAM_EXECUTE_DELAY_MS = "twin_execute_delay_ms"

# Tensor names, the same as emotion_stream.layout (this file runs inside Triton and must
# not import the project).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_RANK = 2  # [batch, sequence]
ONNX_FILE = "model.onnx"  # beside this model.py in the twin's version folder


class InvalidInputError(ValueError):
    """A request whose inputs the model cannot run on: answered with INVALID_ARG."""


@dataclass(frozen=True)
class InputLimits:
    """What the ONNX model accepts beyond dtype and rank (``None``: not known, not checked)."""

    vocab_size: int | None = None
    max_sequence_length: int | None = None

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> InputLimits:
        """Read the limits from config parameters (absent or empty means unknown)."""

        def number(key: str) -> int | None:
            value = parameters.get(key, "").strip()
            return int(value) if value else None

        return cls(
            vocab_size=number(PARAM_VOCAB_SIZE),
            max_sequence_length=number(PARAM_MAX_SEQUENCE_LENGTH),
        )


def check_token_inputs(
    input_ids: npt.NDArray[Any], attention_mask: npt.NDArray[Any], limits: InputLimits
) -> None:
    """Raise :class:`InvalidInputError` unless the pair is one the model runs correctly on.

    Raises
    ------
    InvalidInputError
        Wrong dtype or rank, mismatched shapes, an empty sequence, a sequence longer than
        the model's positions, a token id outside the vocabulary, a mask not made of 0/1.
    """
    for name, array in ((INPUT_IDS, input_ids), (ATTENTION_MASK, attention_mask)):
        if array.dtype != np.int64:
            raise InvalidInputError(f"{name} must be INT64, got {array.dtype}")
        if array.ndim != TOKEN_RANK:
            raise InvalidInputError(
                f"{name} must be [batch, sequence], got shape {list(array.shape)}"
            )
    if input_ids.shape != attention_mask.shape:
        raise InvalidInputError(
            f"{INPUT_IDS} shape {list(input_ids.shape)} differs from "
            f"{ATTENTION_MASK} shape {list(attention_mask.shape)}"
        )
    batch, length = input_ids.shape
    if batch == 0 or length == 0:
        raise InvalidInputError(f"empty input: shape {list(input_ids.shape)}")
    if limits.max_sequence_length is not None and length > limits.max_sequence_length:
        raise InvalidInputError(
            f"sequence length {length} exceeds the model's maximum {limits.max_sequence_length}"
        )
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or (limits.vocab_size is not None and high >= limits.vocab_size):
        bound = limits.vocab_size if limits.vocab_size is not None else "∞"
        raise InvalidInputError(
            f"{INPUT_IDS} out of vocabulary range [0, {bound}): min {low}, max {high}"
        )
    if not np.isin(attention_mask, (0, 1)).all():
        raise InvalidInputError(f"{ATTENTION_MASK} must hold only 0 and 1")


Feeds = dict[str, npt.NDArray[Any]]
Outcome = list[npt.NDArray[Any]] | Exception


def _shape_key(feeds: Feeds) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """What must agree for requests to share one batch: names, non-batch dims, dtypes."""
    return tuple(
        (name, tuple(feeds[name].shape[1:]), str(feeds[name].dtype)) for name in sorted(feeds)
    )


def run_merged(
    requests: list[Feeds], run: Callable[[Feeds], list[npt.NDArray[Any]]]
) -> list[Outcome]:
    """Run each group of same-shaped requests as one batch; split the outputs back.

    Returns one outcome per request, in order: its outputs, or the exception its run
    raised. When a merged run fails, its members run alone so that a failure stays
    with the request that caused it.

    This is what Triton's onnxruntime backend does with dynamically batched requests,
    so the twin keeps its numerics: with a dynamically quantized INT8 model a row's
    logits move slightly with its batch mates (activation scales are per tensor).
    """
    outcomes: dict[int, Outcome] = {}
    groups: dict[tuple[tuple[str, tuple[int, ...], str], ...], list[int]] = {}
    for index, feeds in enumerate(requests):
        groups.setdefault(_shape_key(feeds), []).append(index)

    def alone(index: int) -> Outcome:
        try:
            return run(requests[index])
        except Exception as error:
            return error

    for members in groups.values():
        if len(members) == 1:
            outcomes[members[0]] = alone(members[0])
            continue
        names = list(requests[members[0]])
        merged = {name: np.concatenate([requests[i][name] for i in members]) for name in names}
        try:
            results = run(merged)
        except Exception:
            for index in members:
                outcomes[index] = alone(index)
            continue
        sizes = [len(next(iter(requests[i].values()))) for i in members]
        cuts = np.cumsum(sizes)[:-1]
        per_output = [np.split(result, cuts) for result in results]
        for position, index in enumerate(members):
            outcomes[index] = [parts[position] for parts in per_output]
    return [outcomes[index] for index in range(len(requests))]


def _parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """Config parameters as plain strings (Triton's JSON nests them in ``string_value``)."""
    raw: Mapping[str, Any] = model_config.get("parameters", {})
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


class TritonPythonModel:
    """The Python backend's entry point (the class name is Triton's contract)."""

    def initialize(self, args: Mapping[str, str]) -> None:
        """Open the ONNX model with the thread counts the config asks for."""
        config: dict[str, Any] = json.loads(args["model_config"])
        parameters = _parameters(config)
        self.limits = InputLimits.from_parameters(parameters)
        self.execute_delay_s = float(parameters.get(PARAM_EXECUTE_DELAY_MS) or 0) / 1000
        self.input_names = [entry["name"] for entry in config["input"]]
        self.output_names = [entry["name"] for entry in config["output"]]
        options = ort.SessionOptions()
        # Triton's onnxruntime backend reads the same two parameters; 0 = onnxruntime's default.
        options.intra_op_num_threads = int(parameters.get(PARAM_INTRA_OP_THREADS) or 0)
        options.inter_op_num_threads = int(parameters.get(PARAM_INTER_OP_THREADS) or 0)
        onnx_path = os.path.join(args["model_repository"], args["model_version"], ONNX_FILE)
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.onnx_inputs = {entry.name for entry in self.session.get_inputs()}
        self._ort_invalid_argument: type[Exception] = _ort_exception("InvalidArgument")

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order; a bad request fails alone.

        Requests that dynamic batching delivered together run as one onnxruntime batch
        when their shapes agree (Triton only merges equal shapes unless told otherwise).
        """
        if self.execute_delay_s > 0:
            time.sleep(self.execute_delay_s)  # the injected slowness, see PARAM_EXECUTE_DELAY_MS
        responses: list[Any] = [None] * len(requests)
        accepted: list[tuple[int, Feeds]] = []
        for index, request in enumerate(requests):
            try:
                accepted.append((index, self._feeds(request)))
            except InvalidInputError as error:
                responses[index] = _error_response(str(error), invalid_argument=True)
        outcomes = run_merged([feeds for _, feeds in accepted], self._run)
        for (index, _), outcome in zip(accepted, outcomes, strict=True):
            responses[index] = self._response(outcome)
        return responses

    def _feeds(self, request: Any) -> Feeds:
        """The request's inputs, checked (:class:`InvalidInputError` when unusable)."""
        feeds = {
            name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            for name in self.input_names
        }
        if INPUT_IDS in feeds and ATTENTION_MASK in feeds:
            check_token_inputs(feeds[INPUT_IDS], feeds[ATTENTION_MASK], self.limits)
        return {name: array for name, array in feeds.items() if name in self.onnx_inputs}

    def _run(self, feeds: Feeds) -> list[npt.NDArray[Any]]:
        return list(self.session.run(self.output_names, feeds))

    def _response(self, outcome: list[npt.NDArray[Any]] | Exception) -> Any:
        if isinstance(outcome, Exception):
            # onnxruntime's own input complaints stay INVALID_ARG; anything else is ours.
            invalid = isinstance(outcome, self._ort_invalid_argument)
            return _error_response(f"onnxruntime: {outcome}", invalid_argument=invalid)
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(result))
            for name, result in zip(self.output_names, outcome, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        """Release the session (Triton calls this on unload and shutdown)."""
        self.session = None


def _ort_exception(name: str) -> type[Exception]:
    """onnxruntime's exception class ``name`` (a never-raised stand-in when absent)."""
    found = getattr(ort_state, name, None)
    if isinstance(found, type) and issubclass(found, Exception):
        return found

    class _NeverRaisedError(Exception):
        pass

    return _NeverRaisedError


def _error_response(message: str, *, invalid_argument: bool) -> Any:
    code = pb_utils.TritonError.INVALID_ARG if invalid_argument else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
