"""The chart's worker, run for real: processes started from the rendered StatefulSet.

No cluster runs here, so the test plays kubelet for the rendered worker container
(``local_pods.py``): the same command and args, the same env (the pod name from
``fieldRef metadata.name``), the same volumes — the model volume is the tiny exported
repository, ``/tmp`` an empty folder per pod, and each Secret volume the Secret's bytes
projected as kubelet projects them. Triton's Service address and the pod's metrics port
are swapped for local ones after checking them against the rendered objects; Kafka's
bootstrap address is a value, set to the test broker.

Then it probes the rendered readiness and liveness paths, feeds tweets, checks every id is
classified (exactly once for ``exactly_once``, as the pods' ordinal names give each its own
transactional id), and stops each pod with SIGTERM, which must end within the rendered
``terminationGracePeriodSeconds``. A wrong variable, path or port fails here.

Over PLAINTEXT (the shared broker), and over SASL_SSL with SCRAM and ACLs (a broker of the
test's own, ``tests/support/secure_fixtures.py``): the chart's security values — the
mechanism, the user, the password from a Secret (made by the chart, or one that exists, as
a Strimzi ``KafkaUser``'s does) and the CA from a Secret — are all the worker gets, and
the ACLs are exactly what docs/security.md tells a Kafka admin to grant. A wrong password
in the rendered Secret stops the worker, naming the setting.
"""

from __future__ import annotations

import secrets
import signal
from pathlib import Path
from typing import Any

import pytest

from compose.embedded import SCRAM_MECHANISM, SECURE_LISTENER
from tests.chart.local_pods import LocalPod, pods_from, start
from tests.chart.render import RELEASE, Rendered, render
from tests.support.delivery import check_delivery
from tests.support.network import http_status
from tests.support.pipeline import (
    AT_LEAST_ONCE,
    DELIVERY_MODES,
    EXACTLY_ONCE,
    Pipeline,
    PipelineFactory,
)
from tests.support.secure_fixtures import WORKER_USER, SecureKafka, SecureKafkaFactory
from tests.support.waiting import wait_until
from tests.support.worker_process import WORKER_START_TIMEOUT_S, WorkerRun
from worker.cli import EXIT_FATAL

pytestmark = [pytest.mark.chart, pytest.mark.integration]

PARTITIONS = 2
REPLICAS = 2
TWEETS = 200
# Worker start-up on a loaded 2-core machine (tokenizer stack import), as the harness allows.
READY_TIMEOUT_S = 120.0
RESULTS_TIMEOUT_S = 120.0
# The namespace's Secrets a SASL_SSL install names (Strimzi's names for them).
CA_SECRET = "prod-kafka-cluster-ca-cert"
USER_SECRET = "emotion-worker"
# Short retries through worker.settings, so that a refused login is told from an outage
# quickly (tests/integration/test_security.py derives the bound below the same way): the
# exit comes within two kafka-python bootstraps (30 s each) plus one backoff and a margin
# for closing on a loaded machine, after start-up's own bound.
RETRY_BACKOFF_MAX_S = 2.0
KAFKA_BOOTSTRAP_S = 30.0
CLOSE_MARGIN_S = 20.0
REFUSED_LOGIN_EXIT_S = (
    WORKER_START_TIMEOUT_S + 2 * KAFKA_BOOTSTRAP_S + RETRY_BACKOFF_MAX_S + CLOSE_MARGIN_S
)
FAST_RETRY_SETTINGS = {"RETRY_BACKOFF_INITIAL_S": 0.2, "RETRY_BACKOFF_MAX_S": RETRY_BACKOFF_MAX_S}


def chart_values(
    pipeline: Pipeline, *, delivery: str, replicas: int = REPLICAS, **kafka: Any
) -> dict[str, Any]:
    """Values pointing the chart at the pipeline's topics and group (``kafka`` adds keys)."""
    return {
        "kafka": {
            "bootstrapServers": pipeline.bootstrap_servers,
            "consumerGroup": pipeline.group,
            "topics": {
                "input": pipeline.input_topic,
                "output": pipeline.output_topic,
                "dlq": pipeline.dlq_topic,
                "partitions": PARTITIONS,
            },
            **kafka,
        },
        "worker": {
            "replicas": replicas,
            "delivery": delivery,
            "settings": {"LOG_SUMMARY_INTERVAL_S": 2, **FAST_RETRY_SETTINGS},
        },
    }


def sasl_ssl_values(
    secure: SecureKafka,
    pipeline: Pipeline,
    *,
    delivery: str,
    password: str | None = None,
    replicas: int = REPLICAS,
) -> dict[str, Any]:
    """The chart's SASL_SSL values for the secure broker: the CA from a namespace Secret,
    the password either given (the chart makes the Secret) or from ``USER_SECRET``."""
    values = chart_values(
        pipeline,
        delivery=delivery,
        replicas=replicas,
        securityProtocol=SECURE_LISTENER,
        sasl={
            "mechanism": SCRAM_MECHANISM,
            "username": WORKER_USER,
            **({"password": password} if password else {"existingSecret": USER_SECRET}),
        },
        tls={"caSecret": CA_SECRET},
    )
    values["kafka"]["bootstrapServers"] = secure.secure_bootstrap_servers
    return values


def local_pods(
    objects: Rendered,
    triton_server: Any,
    tiny_model_repository: Path,
    tmp_path: Path,
    replicas: int = REPLICAS,
    namespace_secrets: dict[str, dict[str, bytes]] | None = None,
) -> list[LocalPod]:
    assert objects.worker["spec"]["replicas"] == replicas
    assert objects.worker["metadata"]["name"].startswith(RELEASE)
    return pods_from(
        objects,
        replicas=replicas,
        triton_url=triton_server.grpc_url,
        root=tmp_path / "pods",
        stand_ins={"models": tiny_model_repository},
        namespace_secrets=namespace_secrets,
    )


def start_all(pods: list[LocalPod], pipeline: Pipeline, log_dir: Path) -> list[WorkerRun]:
    runs = []
    for pod in pods:
        run = start(pod, log_dir)
        pipeline.runs.append(run)  # killed by the fixture whatever happens
        runs.append(run)
    return runs


def classify_with_rendered_workers(
    objects: Rendered,
    pipeline: Pipeline,
    pods: list[LocalPod],
    delivery: str,
    log_dir: Path,
    label: str,
) -> list[WorkerRun]:
    """Start the pods, wait until ready and sharing the partitions, classify, stop them."""
    runs = start_all(pods, pipeline, log_dir)
    for pod, run in zip(pods, runs, strict=True):
        wait_until(
            lambda pod=pod, run=run: (
                not run.alive() or http_status(pod.metrics_port, pod.readiness_path) == 200
            ),
            READY_TIMEOUT_S,
            lambda run=run: f"{run.name} never ready\n{run.log_tail()}",
        )
        assert run.alive(), f"{run.name} exited\n{run.log_tail()}"
        assert http_status(pod.metrics_port, pod.liveness_path) == 200
    # Both in the group before any tweet: the one rebalance happens on an empty topic.
    wait_until(
        lambda: (
            all(run.assigned_partitions() for run in runs)
            and set().union(*(run.assigned_partitions() for run in runs)) == set(range(PARTITIONS))
        ),
        READY_TIMEOUT_S,
        lambda: "partitions not split between the pods\n" + pipeline.describe(),
    )

    ids = pipeline.seed(TWEETS)
    pipeline.wait_for_results(ids, RESULTS_TIMEOUT_S)
    pipeline.settle(RESULTS_TIMEOUT_S)
    check_delivery(pipeline, ids, max_extra_results=0, label=label)

    # Each pod is its own worker: its id, and for exactly-once its transactional id, come
    # from the pod name.
    for pod, run in zip(pods, runs, strict=True):
        consuming = run.events("consuming")
        assert consuming, run.log_tail()
        assert consuming[-1]["worker_id"] == pod.name
        expected_id = f"{pipeline.group}-{pod.name}" if delivery == EXACTLY_ONCE else None
        assert consuming[-1]["transactional_id"] == expected_id
        assert run.metric("emotion_worker_published_total") > 0, "each pod did some work"

    # Kubernetes sends SIGTERM and waits terminationGracePeriodSeconds before SIGKILL.
    grace = objects.worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    for run in runs:
        run.process.send_signal(signal.SIGTERM)
    for run in runs:
        assert run.wait(grace) == 0, run.log_tail()
    return runs


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_rendered_workers_classify_every_tweet(
    helm: str,
    make_pipeline: PipelineFactory,
    triton_server: Any,
    tiny_model_repository: Path,
    tmp_path: Path,
    delivery: str,
) -> None:
    pipeline = make_pipeline(partitions=PARTITIONS, delivery=delivery)
    objects = render(helm, chart_values(pipeline, delivery=delivery))
    pods = local_pods(objects, triton_server, tiny_model_repository, tmp_path)
    classify_with_rendered_workers(
        objects, pipeline, pods, delivery, tmp_path, label=f"chart {delivery}"
    )


@pytest.mark.parametrize(
    ("delivery", "password_secret"),
    [(EXACTLY_ONCE, "made by the chart"), (AT_LEAST_ONCE, "existing")],
    ids=["exactly_once-chart-secret", "at_least_once-existing-secret"],
)
def test_rendered_workers_classify_over_sasl_ssl_with_acls(
    helm: str,
    make_pipeline: PipelineFactory,
    secure_kafka_broker: SecureKafkaFactory,
    triton_server: Any,
    tiny_model_repository: Path,
    tmp_path: Path,
    delivery: str,
    password_secret: str,
) -> None:
    secure = secure_kafka_broker(authorizer=True)
    # The harness seeds and reads over the broker's PLAINTEXT listener (a super user's);
    # only the workers use SASL_SSL, with just the rights docs/security.md lists.
    pipeline = make_pipeline(
        partitions=PARTITIONS, delivery=delivery, bootstrap_servers=secure.bootstrap_servers
    )
    secure.allow_worker(
        WORKER_USER,
        input_topic=pipeline.input_topic,
        group=pipeline.group,
        output_topics=[pipeline.output_topic, pipeline.dlq_topic],
        # Exactly-once: the transactional ids <consumerGroup>-<pod name>.
        transactional_id_prefix=f"{pipeline.group}-" if delivery == EXACTLY_ONCE else None,
    )
    password = secure.password(WORKER_USER)
    namespace_secrets = {CA_SECRET: {"ca.crt": secure.tls.ca_cert.read_bytes()}}
    if password_secret == "existing":
        # As `kubectl create secret --from-file` leaves it: with the file's newline.
        namespace_secrets[USER_SECRET] = {"password": f"{password}\n".encode()}
        values = sasl_ssl_values(secure, pipeline, delivery=delivery)
    else:
        values = sasl_ssl_values(secure, pipeline, delivery=delivery, password=password)
    objects = render(helm, values)
    assert bool(objects.of_kind("Secret")) == (password_secret == "made by the chart")

    pods = local_pods(
        objects,
        triton_server,
        tiny_model_repository,
        tmp_path,
        namespace_secrets=namespace_secrets,
    )
    for pod in pods:
        assert "EMOTION_STREAM_SASL_PASSWORD" not in pod.env, "the password must be a file"
        assert Path(pod.env["EMOTION_STREAM_SASL_PASSWORD_FILE"]).is_file()
        assert Path(pod.env["EMOTION_STREAM_SSL_CAFILE"]).is_file()
    runs = classify_with_rendered_workers(
        objects, pipeline, pods, delivery, tmp_path, label=f"chart sasl_ssl {delivery}"
    )
    for run in runs:
        log = run.log()
        assert f'"kafka_bootstrap_servers": "{secure.secure_bootstrap_servers}"' in log
        assert '"security_protocol": "SASL_SSL"' in log
        assert password not in log, f"the password appears in {run.name}'s log"


def test_rendered_worker_with_a_wrong_password_stops_clearly(
    helm: str,
    make_pipeline: PipelineFactory,
    secure_kafka_broker: SecureKafkaFactory,
    triton_server: Any,
    tiny_model_repository: Path,
    tmp_path: Path,
) -> None:
    secure = secure_kafka_broker()
    pipeline = make_pipeline(partitions=PARTITIONS, bootstrap_servers=secure.bootstrap_servers)
    pipeline.seed(5)
    wrong = "wrong-" + secrets.token_urlsafe(12)
    objects = render(
        helm, sasl_ssl_values(secure, pipeline, delivery=AT_LEAST_ONCE, password=wrong, replicas=1)
    )
    [pod] = local_pods(
        objects,
        triton_server,
        tiny_model_repository,
        tmp_path,
        replicas=1,
        namespace_secrets={CA_SECRET: {"ca.crt": secure.tls.ca_cert.read_bytes()}},
    )
    [run] = start_all([pod], pipeline, tmp_path)

    readiness: set[int | None] = set()

    def stopped() -> bool:
        readiness.add(http_status(pod.metrics_port, pod.readiness_path))
        return not run.alive()

    wait_until(
        stopped,
        REFUSED_LOGIN_EXIT_S,
        lambda: f"a refused login was not recognised (still running)\n{run.log_tail()}",
        interval_s=0.5,
    )
    assert run.wait(10) == EXIT_FATAL, run.log_tail()
    assert 200 not in readiness, f"ready with a wrong password: {readiness}"
    log = run.log()
    cause = [line for line in log.splitlines() if "refused the login" in line]
    assert len(cause) == 1, run.log_tail()
    # The message names the setting the chart uses (the password file) and the reason.
    assert "EMOTION_STREAM_SASL_PASSWORD_FILE" in cause[0], cause
    assert "invalid credentials" in cause[0], cause
    assert wrong not in log and secure.password(WORKER_USER) not in log
    assert '"partitions assigned"' not in log
    assert pipeline.result_ids() == {}
