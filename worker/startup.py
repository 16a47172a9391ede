"""Start-up steps: refuse what cannot work before consuming, wait for what is not up yet.

A bad setting or model stops the worker with a :class:`~worker.errors.FatalError` naming
it; Triton or Kafka not answering yet is waited for, backing off, until ``stop``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from worker import failpoints
from worker.backoff import Backoff
from worker.errors import FatalError, ModelMismatch, TransientError
from worker.inference import ModelSpec
from worker.observability import Health, WorkerMetrics
from worker.ports import Classifier
from worker.settings import WorkerSettings


class StoppedWhileStartingError(Exception):
    """stop() arrived while starting up: leave quietly, nothing was consumed."""


def announce(settings: WorkerSettings, metrics_port: int | None, log: Any) -> None:
    """Log the settings (redacted) and what the operator should know before it starts."""
    log.info("starting", settings=settings.redacted(), metrics_port=metrics_port)
    if settings.password_in_clear:  # allowed by the operator, said once
        log.warning(
            "the SASL password crosses the network in clear (SASL_PLAINTEXT with "
            "PLAIN), as EMOTION_STREAM_ALLOW_CLEARTEXT_PASSWORD allows"
        )
    check_failpoint(log)


def check_failpoint(log: Any) -> None:
    """Refuse a malformed test failpoint at startup; say loudly when one is armed."""
    try:
        point = failpoints.armed()
    except failpoints.FailpointSpecError as exc:
        raise FatalError(str(exc)) from exc
    if point is not None:
        log.warning(
            "test failpoint armed: this process will SIGKILL itself (or stall)",
            failpoint=point.name,
            on_hit=point.on_hit,
            sleep_s=point.sleep_s,
        )


def read_labels(settings: WorkerSettings) -> list[str]:
    path = settings.layout.labels
    try:
        labels = settings.layout.read_labels()
    except OSError as exc:
        raise FatalError(f"cannot read the labels file {path}: {exc}") from exc
    if not labels:
        raise FatalError(f"the labels file {path} is empty")
    return labels


def fitting_batch_size(spec: ModelSpec, labels: list[str], requested: int, log: Any) -> int:
    """The batch size to send the model: ``requested``, clamped to the model's own limit.

    Raises
    ------
    ModelMismatch
        The model outputs a different number of logits than there are labels.
    """
    if spec.num_labels != len(labels):
        raise ModelMismatch(
            spec.name,
            f"it outputs {spec.num_labels} logits but labels.txt lists {len(labels)} labels",
        )
    size = requested
    if 0 < spec.max_batch_size < requested:
        log.warning(
            "max_batch_size clamped to the model's",
            requested=requested,
            model_max_batch_size=spec.max_batch_size,
        )
        size = spec.max_batch_size
    log.info("model ready", model=spec.name, max_batch_size=size, labels=labels)
    return size


@dataclass(frozen=True)
class Waiting:
    """How start-up waits for a service: backing off, alive (beating) but not ready,
    until the service answers or ``stop`` is set."""

    settings: WorkerSettings
    stop: threading.Event
    health: Health
    set_ready: Callable[[bool, str], bool]
    metrics: WorkerMetrics
    log: Any

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.retry_backoff_initial_s, self.settings.retry_backoff_max_s)

    def for_model(self, classifier: Classifier) -> ModelSpec | None:
        """Wait until Triton serves the model; its spec (None: stopped meanwhile)."""
        backoff = self._backoff()
        while not self.stop.is_set():
            self.health.beat()  # waiting is alive, not stuck: only readiness is false
            try:
                classifier.ensure_ready()
                return classifier.load_spec()
            except TransientError as exc:
                delay = backoff.next_delay()
                self.set_ready(False, f"waiting for Triton: {exc}")
                self.log.warning("waiting for model", error=str(exc), retry_in_s=round(delay, 2))
                self.metrics.retries.labels(reason=type(exc).__name__).inc()
                self.stop.wait(delay)
        return None

    @contextlib.contextmanager
    def connected(self, factory: Callable[..., Any], *args: Any) -> Iterator[Any]:
        """Enter a Kafka client, retrying transient failures until it works or we stop."""
        backoff = self._backoff()
        while True:
            self.health.beat()
            client = factory(*args)
            try:
                entered = client.__enter__()
            except TransientError as exc:
                if self.stop.is_set():
                    raise StoppedWhileStartingError from exc
                delay = backoff.next_delay()
                self.set_ready(False, f"waiting for Kafka: {exc}")
                self.log.warning("waiting for Kafka", error=str(exc), retry_in_s=round(delay, 2))
                self.stop.wait(delay)
                continue
            break
        try:
            yield entered
        finally:
            client.__exit__(None, None, None)
