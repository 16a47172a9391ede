"""The worker's settings: one class, read from ``EMOTION_STREAM_*`` environment variables.

Every field has a docstring; ``docs/settings.md`` is generated from them
(``python -m worker.settings_doc``). The class is frozen: a running worker never changes
its mind. Derived values (the Kafka client's security arguments, the Triton model layout)
are properties, so the rest of the worker never re-derives them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from emotion_stream.layout import DEFAULT_MODEL_NAME, ModelLayout, default_repository
from emotion_stream.topics import DEAD_LETTER_TOPIC, EMOTIONS_TOPIC, TWEETS_TOPIC
from worker.security import (
    KAFKA_SECURITY_FIELDS,
    KafkaSecurity,
    SaslMechanism,
    SecurityProtocol,
    secret_from,
    triton_tls_problems,
)

ENV_PREFIX = "EMOTION_STREAM_"

# The exported RoBERTa's position embeddings cover 128 tokens (plus the two special
# positions RoBERTa reserves); longer inputs would index past them.
MODEL_MAX_TOKENS = 128

# Tweets are at most 280 characters (≤ 1,120 UTF-8 bytes). 100 kB is ~90x that, and a
# result repeats the text JSON-escaped (≤ 6 bytes per byte for control characters),
# so even the worst case stays under Kafka's default 1 MB message size.
DEFAULT_MAX_TEXT_BYTES = 100_000

METRICS_DISABLED = -1

# Kafka's defaults: the producer's transaction.timeout.ms, and the broker's
# transaction.max.timeout.ms (a producer asking for more is refused).
MIN_TRANSACTION_TIMEOUT_MS = 60_000
BROKER_MAX_TRANSACTION_TIMEOUT_MS = 900_000


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def default_worker_id() -> str:
    """``<hostname>-<pid>``: unique per process, readable in logs and DLQ headers."""
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BaseSettings):
    """Everything ``emotion-stream worker`` can be told, with its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    # --- Kafka -------------------------------------------------------------------
    kafka_bootstrap_servers: str = "localhost:9092"
    """Comma-separated ``host:port`` list of Kafka brokers to bootstrap from."""

    input_topic: str = TWEETS_TOPIC
    """Topic the worker consumes tweets from."""

    output_topic: str = EMOTIONS_TOPIC
    """Topic the worker publishes one classified result per input to."""

    dlq_topic: str = DEAD_LETTER_TOPIC
    """Dead-letter topic: poison records, original key/value/headers plus ``dlq.*`` headers."""

    consumer_group: str = "emotion-workers"
    """Kafka consumer group; workers sharing it split the input partitions."""

    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group with no committed offset starts: ``earliest`` loses nothing."""

    commit_interval_ms: int = Field(default=1000, ge=0, le=60_000)
    """How often completed offsets are committed while running (0 = after every batch).
    Commits on revocation and shutdown are synchronous regardless."""

    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    """Kafka's ``max.poll.interval.ms``. The worker keeps polling while it waits, so this
    only bounds one loop iteration (at most one Triton deadline)."""

    security_protocol: SecurityProtocol = "PLAINTEXT"
    """Kafka security protocol."""

    sasl_mechanism: SaslMechanism | None = None
    """SASL mechanism when ``security_protocol`` is ``SASL_*``."""

    sasl_username: str | None = None
    """SASL user name."""

    sasl_password: SecretStr | None = None
    """SASL password; never logged, never shown in errors. Environment only (no option:
    a command line shows in ``ps``); or ``sasl_password_file``."""

    sasl_password_file: Path | None = None
    """File holding the SASL password (e.g. a mounted secret), read at start-up.
    The convention of Docker and Kubernetes secrets; trailing newline stripped; instead of
    ``sasl_password``, not with it."""

    allow_cleartext_password: bool = False
    """Accept ``SASL_PLAINTEXT`` with ``PLAIN`` (the password in clear on the network).
    Logged as a warning at start-up; refused without it."""

    ssl_cafile: Path | None = None
    """PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL)."""

    ssl_certfile: Path | None = None
    """PEM client certificate for mutual TLS with the brokers."""

    ssl_keyfile: Path | None = None
    """PEM private key of ``ssl_certfile``."""

    # --- Triton ------------------------------------------------------------------
    triton_url: str = "localhost:8001"
    """Triton gRPC endpoint, ``host:port``."""

    model_name: str = DEFAULT_MODEL_NAME
    """Model name in Triton's repository."""

    model_version: str = ""
    """Model version to call; empty means the version Triton's policy serves (latest)."""

    model_repository: Path = Field(default_factory=default_repository)
    """Model repository the tokenizer (``<model>/tokenizer/``) and ``labels.txt`` are read
    from; the same folder Triton serves."""

    triton_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """Deadline for one Triton call; passing it is a transient error (retried)."""

    triton_ssl: bool = False
    """Use TLS for the gRPC channel to Triton."""

    triton_root_certificates: Path | None = None
    """PEM root certificates to verify Triton's server certificate (TLS)."""

    triton_private_key: Path | None = None
    """PEM client private key for mutual TLS with Triton."""

    triton_certificate_chain: Path | None = None
    """PEM client certificate chain for mutual TLS with Triton."""

    # --- batching and tokenizing ------------------------------------------------
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most tweets per inference call; lowered to the model's ``max_batch_size`` with a
    warning if above it."""

    max_batch_wait_ms: int = Field(default=20, ge=0, le=10_000)
    """Longest a batch waits for more tweets after its first one arrived."""

    max_in_flight_batches: int = Field(default=2, ge=1, le=16)
    """Batches at Triton at once; the next is tokenized while these run."""

    max_sequence_length: int = Field(default=MODEL_MAX_TOKENS, ge=8, le=MODEL_MAX_TOKENS)
    """Tokens per text after truncation (the model's limit is 128)."""

    batch_window: int = Field(default=128, ge=1, le=4096)
    """Most already-polled tweets planned together: a batch leaves once ``max_batch_size``
    wait (or the oldest waited ``max_batch_wait_ms``) and takes up to this many, cut into
    requests of at most ``max_batch_size``; results still go out in arrival order."""

    padding: Literal["bucketed", "dynamic", "fixed"] = "bucketed"
    """``bucketed`` sorts a batch by token length into requests of similar lengths;
    ``dynamic`` keeps arrival order; both pad each request to its longest text, rounded up
    to a multiple of 8. ``fixed`` always pads to ``max_sequence_length`` (the original
    guide's behaviour, for comparison)."""

    max_text_bytes: int = Field(default=DEFAULT_MAX_TEXT_BYTES, ge=1, le=10_000_000)
    """Texts longer than this many UTF-8 bytes are dead-lettered (``TextTooLarge``)."""

    max_unacknowledged_records: int = Field(default=1000, ge=1, le=1_000_000)
    """Most results and dead letters handed to the producer and not yet acknowledged by the
    broker; at the bound the worker pauses consumption (and inference) until acknowledgements
    come. Bounds memory while the broker is slow or refuses writes: at most this many
    records (each under the output topic's ``max.message.bytes``)."""

    # --- delivery and retries ----------------------------------------------------
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """Delivery guarantee. ``at_least_once``: offsets committed after results are
    acknowledged (a crash may repeat results). ``exactly_once``: results, dead letters and
    offsets committed in one Kafka transaction per commit (readers of the output and
    dead-letter topics must use ``isolation_level=read_committed``)."""

    transactional_id: str = ""
    """Kafka transactional id of this worker's producer (``exactly_once`` only): unique per
    replica, the same across its restarts. Empty means ``<consumer_group>-<worker_id>`` when
    ``worker_id`` is set, else ``<consumer_group>-<hostname>``."""

    retry_backoff_initial_s: float = Field(default=0.2, gt=0, le=60)
    """First wait after a transient failure; doubles on each further failure."""

    retry_backoff_max_s: float = Field(default=10.0, gt=0, le=600)
    """Cap of the backoff between retries of a transient failure (plus jitter)."""

    # --- identity and observability ---------------------------------------------
    worker_id: str = Field(default_factory=default_worker_id, min_length=1)
    """This worker's name in logs, metrics and DLQ headers (default ``hostname-pid``)."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level; ``debug`` adds one line per batch."""

    log_summary_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between the info-level throughput summaries."""

    metrics_port: int = Field(default=9100, ge=METRICS_DISABLED, le=65535)
    """Port of the HTTP server for ``/metrics``, ``/healthz``, ``/readyz``; 0 picks a free
    port (logged), -1 disables the server."""

    metrics_host: str = "0.0.0.0"
    """Address the metrics/health server binds to (``127.0.0.1`` to keep it local).
    All interfaces by default: in a container the probes and the scraper come from outside
    its loopback."""

    @field_validator("transactional_id")
    @classmethod
    def _stripped(cls, value: str) -> str:
        return value.strip()

    @field_validator("model_version")
    @classmethod
    def _version_is_number_or_empty(cls, value: str) -> str:
        if value and not value.isdigit():
            raise ValueError("must be a positive integer such as '1', or empty for latest")
        return value

    @field_validator(
        "kafka_bootstrap_servers",
        "input_topic",
        "output_topic",
        "dlq_topic",
        "consumer_group",
        "triton_url",
        "model_name",
    )
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """A ``*_file`` setting's secret becomes the secret, read once, here at start-up."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for field in SECRET_FIELDS:
            file = data.get(field + "_file")
            secret = secret_from(data.get(field), file, name=env_name, field=field)
            if secret is not None:
                data[field] = secret
        return data

    @model_validator(mode="after")
    def _security_fails_closed(self) -> WorkerSettings:
        """A security setting given without the one it needs stops start-up (see
        :mod:`worker.security`): ignoring it would leave the operator believing in a
        protection that is not there."""
        problems = self.kafka_client_security.problems(env_name) + triton_tls_problems(
            ssl=self.triton_ssl,
            root_certificates=self.triton_root_certificates,
            private_key=self.triton_private_key,
            certificate_chain=self.triton_certificate_chain,
            name=env_name,
        )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        e = env_name
        if self.input_topic in {self.output_topic, self.dlq_topic}:
            raise ValueError(
                f"{e('output_topic')} and {e('dlq_topic')} must differ from "
                f"{e('input_topic')} (the worker would consume its own output)"
            )
        if self.retry_backoff_initial_s > self.retry_backoff_max_s:
            raise ValueError(
                f"{e('retry_backoff_initial_s')} must not exceed {e('retry_backoff_max_s')}"
            )
        if self.transactional_id and not self.exactly_once:
            # Fail closed: an operator who names a transactional id believes in transactions.
            raise ValueError(
                f"{e('transactional_id')} is set but {e('delivery')}={self.delivery}: it only "
                f"matters with {e('delivery')}=exactly_once"
            )
        if self.security_protocol.startswith("SASL"):
            protocol = f"{e('security_protocol')}={self.security_protocol}"
            if self.sasl_mechanism is None:
                raise ValueError(f"{e('sasl_mechanism')} is required with {protocol}")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError(
                    f"{e('sasl_username')} and {e('sasl_password')} are required with {protocol}"
                )
        return self

    # --- derived ---------------------------------------------------------------
    @property
    def layout(self) -> ModelLayout:
        """Where the tokenizer and labels of the served model live."""
        version = int(self.model_version) if self.model_version else 1
        return ModelLayout(self.model_repository, self.model_name, version)

    @property
    def exactly_once(self) -> bool:
        return self.delivery == "exactly_once"

    @property
    def effective_transactional_id(self) -> str:
        """The transactional id the producer uses: the setting; else the group and an explicit
        worker id (an operator-chosen name per process, as the local stack and the tests
        give); else the group and the host name (stable across restarts of one host or
        container, distinct between Compose replicas, whose host names are container ids).
        The default worker id is not used: its pid changes at every restart."""
        if self.transactional_id:
            return self.transactional_id
        if "worker_id" in self.model_fields_set:
            return f"{self.consumer_group}-{self.worker_id}"
        return f"{self.consumer_group}-{socket.gethostname()}"

    @property
    def transaction_timeout_ms(self) -> int:
        """Exactly-once: how long the broker lets a transaction stay open before aborting it.

        A transaction spans one commit interval plus the loop iteration that ends it (at
        most a Triton deadline or two), so it must outlast that; shorter is better, since
        a crashed replica's open transaction holds back read_committed readers of its
        output partitions until then (unless the replica restarts with the same id).
        Capped at the broker's default ``transaction.max.timeout.ms`` (15 min).
        """
        needed = 3 * self.commit_interval_ms + 2 * int(self.triton_timeout_s * 1000)
        return min(BROKER_MAX_TRANSACTION_TIMEOUT_MS, max(MIN_TRANSACTION_TIMEOUT_MS, needed))

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port != METRICS_DISABLED

    @property
    def kafka_client_security(self) -> KafkaSecurity:
        """The Kafka security settings as one value (shared with the produce/consume tools)."""
        return KafkaSecurity(**{name: getattr(self, name) for name in KAFKA_SECURITY_FIELDS})

    @property
    def password_in_clear(self) -> bool:
        """SASL_PLAINTEXT with PLAIN: allowed only by ``allow_cleartext_password``."""
        return self.kafka_client_security.password_in_clear

    def kafka_security(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python clients (consumer, producer) — secrets included.

        Never log the result.
        """
        return self.kafka_client_security.client_options()

    def redacted(self) -> dict[str, Any]:
        """The settings as plain values for the startup log; secrets shown as ``**********``."""
        return {
            name: (str(value) if isinstance(value, SecretStr | Path) else value)
            for name, value in self.model_dump().items()
        }


SECRET_FIELDS = frozenset({"sasl_password"})


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad setting, naming its environment variable; secret inputs not echoed."""
    lines = []
    for problem in error.errors():
        location = [str(part) for part in problem.get("loc", ())]
        field = location[0] if location else ""
        message = problem.get("msg", "invalid")
        if field and field in WorkerSettings.model_fields:
            shown = ""
            if field not in SECRET_FIELDS and "input" in problem and problem["type"] != "missing":
                shown = f" (got {problem['input']!r})"
            lines.append(f"{env_name(field)}: {message}{shown}")
        elif field:
            lines.append(f"{field}: {message}")
        else:
            lines.append(message.removeprefix("Value error, "))
    return "\n".join(lines)
