"""A real Apache Kafka broker and a real Triton server as local processes, without Docker.

- :class:`KafkaBroker` runs Kafka 4.x in KRaft mode (one process, broker and controller)
  from the Maven Central jars that :func:`fetch_kafka_jars` copies into a git-ignored cache;
  :class:`KafkaCluster` runs several of them as one cluster (each node broker and
  controller, a static quorum of all nodes) for replication and failover tests.
- :class:`TritonServer` runs the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel on
  the Python-backend twin (:mod:`compose.twin`) of the exporter's model repository.

Both listen on 127.0.0.1 only, keep state, config and log under one folder per service,
record their pid (:mod:`compose.processes`), and are ready only once the real thing answers:
broker metadata for Kafka, ``v2/health/ready`` and model readiness for Triton. A start
that does not become ready stops what it started and raises
:class:`~compose.processes.ServiceStartError` naming the component with its log tail.

One module per job; import from here:

- :mod:`~compose.embedded.service` — the life cycle every service shares
  (:class:`LocalService`: folder, endpoint file, adopt or launch, wait, stop), port checks;
- :mod:`~compose.embedded.kafka_jars` — fetching and finding Kafka's jars;
- :mod:`~compose.embedded.kafka_broker` — one KRaft node; :mod:`~compose.embedded.kafka_cluster`
  — several as one cluster;
- :mod:`~compose.embedded.kafka_security` — ``SASL_SSL`` listener, SCRAM users, ACLs;
  :mod:`~compose.embedded.kafka_admin` — admin clients and readiness probes;
- :mod:`~compose.embedded.topics` — the pipeline's topics and creating them;
- :mod:`~compose.embedded.triton` — pytriton discovery and the Triton server.
"""

from compose.embedded.kafka_broker import (
    DEFAULT_KAFKA_CONTROLLER_PORT,
    DEFAULT_KAFKA_PORT,
    KAFKA_START_TIMEOUT_S,
    KafkaBroker,
    KafkaPorts,
    Replication,
)
from compose.embedded.kafka_cluster import KafkaCluster
from compose.embedded.kafka_jars import default_kafka_libs_dir, fetch_kafka_jars
from compose.embedded.kafka_security import SCRAM_MECHANISM, SECURE_LISTENER, KafkaSecurity
from compose.embedded.service import LOOPBACK, LocalService, default_state_dir, ensure_ports_free
from compose.embedded.topics import (
    DEAD_LETTER_TOPIC,
    DEFAULT_TWEETS_PARTITIONS,
    EMOTIONS_TOPIC,
    TWEETS_TOPIC,
    create_topics,
    pipeline_topics,
)
from compose.embedded.triton import (
    DEFAULT_TRITON_GRPC_PORT,
    DEFAULT_TRITON_HTTP_PORT,
    DEFAULT_TRITON_METRICS_PORT,
    TRITON_START_TIMEOUT_S,
    TritonPorts,
    TritonServer,
    pytriton_dir,
)
from compose.processes import EmbeddedStackError, ServiceStartError, tail

# What the CLI, tests, benchmarks and the stand-in image import; implementation constants
# stay in their modules.
__all__ = [
    "DEAD_LETTER_TOPIC",
    "DEFAULT_KAFKA_CONTROLLER_PORT",
    "DEFAULT_KAFKA_PORT",
    "DEFAULT_TRITON_GRPC_PORT",
    "DEFAULT_TRITON_HTTP_PORT",
    "DEFAULT_TRITON_METRICS_PORT",
    "DEFAULT_TWEETS_PARTITIONS",
    "EMOTIONS_TOPIC",
    "KAFKA_START_TIMEOUT_S",
    "LOOPBACK",
    "SCRAM_MECHANISM",
    "SECURE_LISTENER",
    "TRITON_START_TIMEOUT_S",
    "TWEETS_TOPIC",
    "EmbeddedStackError",
    "KafkaBroker",
    "KafkaCluster",
    "KafkaPorts",
    "KafkaSecurity",
    "LocalService",
    "Replication",
    "ServiceStartError",
    "TritonPorts",
    "TritonServer",
    "create_topics",
    "default_kafka_libs_dir",
    "default_state_dir",
    "ensure_ports_free",
    "fetch_kafka_jars",
    "pipeline_topics",
    "pytriton_dir",
    "tail",
]
