"""The Helm chart, offline: lint, render the values matrix, validate every object.

No cluster runs here, so this is what a chart can be checked for without one:
``helm lint --strict``; every rendered object against the Kubernetes OpenAPI schema of a
current and of the oldest admitted release (``kubernetes-validate``, strict: unknown
fields fail); the custom resources against the fields their projects document
(``crd_schemas.py``); and that each values combination renders what it promises — the
worker's env names are real settings, secrets arrive only as files, probes hit the ports
the worker listens on, autoscalers stop at the partition count.
"""

from __future__ import annotations

import base64
import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from pydantic import ValidationError

from tests.chart.crd_schemas import CUSTOM_RESOURCE_SCHEMAS
from tests.chart.local_pods import mount_volumes, pod_env, stand_in_secrets
from tests.chart.render import (
    CHART,
    KUBE_VERSIONS,
    VALUES_DIR,
    VALUES_FILES,
    Rendered,
    RenderError,
    container,
    render,
)
from worker.app import FLUSH_TIMEOUT_S
from worker.cli import build_settings
from worker.settings import WorkerSettings, describe_validation_error, env_name

pytestmark = pytest.mark.chart

SECRETS_DIR = "/var/run/secrets/emotion-stream"


def case(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


CASES = {case(path): path for path in VALUES_FILES}


@pytest.fixture(scope="module")
def matrix(helm: str) -> dict[tuple[str, str], Rendered]:
    """Every values file rendered for every validated Kubernetes version."""
    return {
        (name, kube): render(helm, values_files=[path], kube_version=kube)
        for name, path in CASES.items()
        for kube in KUBE_VERSIONS
    }


def rendered(matrix: dict[tuple[str, str], Rendered], name: str) -> Rendered:
    return matrix[(name, KUBE_VERSIONS[0])]


def env_of(container_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container_spec.get("env", [])}


def all_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = workload["spec"]["template"]["spec"]
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def workloads(objects: Rendered) -> list[dict[str, Any]]:
    return [o for o in objects.objects if o["kind"] in {"StatefulSet", "Deployment", "Job"}]


# --------------------------------------------------------------------------- lint, schemas


def test_the_matrix_covers_every_combination_the_chart_promises() -> None:
    assert set(CASES) >= {
        "default",
        "exactly-once",
        "sasl-ssl",
        "sasl-password",
        "gpu",
        "keda",
        "hpa",
        "object-storage-s3",
        "object-storage-gs",
    }


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=case)
def test_helm_lint_strict_passes(helm: str, values_file: Path) -> None:
    done = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--values", str(values_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


def validation_errors(obj: dict[str, Any], kube_version: str) -> list[str]:
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    schema = CUSTOM_RESOURCE_SCHEMAS.get(obj.get("kind", ""))
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where}: {'.'.join(map(str, error.path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{where}: no schema for it in Kubernetes {kube_version}: {error}"]
    return []


def empty_fields(node: Any, path: str = "") -> list[str]:
    """Keys rendered with nothing after them (``env:`` from an empty block): YAML null."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in empty_fields(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in empty_fields(v, f"{path}[{i}]")]
    return [path] if node is None else []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_rendered_object_is_valid(
    matrix: dict[tuple[str, str], Rendered], name: str, kube_version: str
) -> None:
    objects = matrix[(name, kube_version)].objects
    assert objects, "nothing rendered"
    errors = [error for obj in objects for error in validation_errors(obj, kube_version)]
    errors += [f"{obj['kind']}: {p} is empty" for obj in objects for p in empty_fields(obj)]
    assert not errors, "\n".join(errors)


def test_the_matrix_renders_every_custom_resource_it_has_a_schema_for(
    matrix: dict[tuple[str, str], Rendered],
) -> None:
    kinds = {obj["kind"] for r in matrix.values() for obj in r.objects}
    assert kinds >= set(CUSTOM_RESOURCE_SCHEMAS), set(CUSTOM_RESOURCE_SCHEMAS) - kinds
    assert kinds >= {
        "StatefulSet",
        "Deployment",
        "Service",
        "Job",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Secret",
        "ServiceAccount",
        "ConfigMap",
    }


def _first(objects: Rendered, kind: str) -> dict[str, Any]:
    return objects.of_kind(kind)[0]


@pytest.mark.parametrize(
    ("name", "kind", "break_it", "complaint"),
    [
        (
            "keda",
            "ScaledObject",
            lambda o: o["spec"]["triggers"][0]["metadata"].update(lagTreshold="5"),
            "lagTreshold",
        ),
        (
            "keda",
            "ScaledObject",
            lambda o: o["spec"]["triggers"][0]["metadata"].update(offsetResetPolicy="oldest"),
            "oldest",
        ),
        (
            "object-storage-s3",
            "PrometheusRule",
            lambda o: o["spec"]["groups"][0]["rules"][0].update(record="x"),
            "valid under each of",
        ),
        (
            "object-storage-s3",
            "PrometheusRule",
            lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "ten minutes"}),
            "ten minutes",
        ),
        (
            "object-storage-s3",
            "ServiceMonitor",
            lambda o: o["spec"]["endpoints"][0].update(intervall="30s"),
            "intervall",
        ),
        (
            "exactly-once",
            "KafkaTopic",
            lambda o: o["metadata"]["labels"].pop("strimzi.io/cluster"),
            "strimzi.io/cluster",
        ),
        (
            "exactly-once",
            "KafkaTopic",
            lambda o: o["spec"].update(partitions=0),
            "minimum",
        ),
        (
            "default",
            "StatefulSet",
            lambda o: o["spec"]["template"]["spec"].update(terminationGracePeriod=90),
            "terminationGracePeriod",
        ),
    ],
)
def test_validation_catches_a_wrong_field(
    matrix: dict[tuple[str, str], Rendered],
    name: str,
    kind: str,
    break_it: Any,
    complaint: str,
) -> None:
    """The schemas are strict enough to fail: a typo or a bad value is reported."""
    obj = copy.deepcopy(_first(rendered(matrix, name), kind))
    assert not validation_errors(obj, KUBE_VERSIONS[0])
    break_it(obj)
    errors = validation_errors(obj, KUBE_VERSIONS[0])
    assert errors and complaint in "\n".join(errors), errors


# --------------------------------------------------------------------------- the worker


@pytest.mark.parametrize("name", sorted(CASES))
def test_worker_env_names_are_settings(matrix: dict[tuple[str, str], Rendered], name: str) -> None:
    """A misspelt EMOTION_STREAM_ variable would be ignored by the worker: fail here."""
    known = {env_name(field) for field in WorkerSettings.model_fields}
    env = env_of(rendered(matrix, name).worker_container)
    ours = {n for n in env if n.startswith("EMOTION_STREAM_")}
    assert ours - known == set()


@pytest.mark.parametrize("name", sorted(CASES))
def test_worker_accepts_the_rendered_settings(
    matrix: dict[tuple[str, str], Rendered],
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The settings a values file gives the worker pass its own validation (which stops
    start-up on a combination that cannot work, e.g. PLAIN in clear without consent).

    The pod's volumes are projected locally (``local_pods.py``), the Secrets the chart does
    not make stood in for, so the ``*_FILE`` paths resolve as they would in the pod.
    """
    objects = rendered(matrix, name)
    pod = f"{objects.worker['metadata']['name']}-0"
    models = tmp_path / "models"  # the model volume (a claim or an emptyDir): only a path here
    models.mkdir()
    volumes = mount_volumes(
        objects,
        pod,
        tmp_path,
        stand_ins={"models": models},
        namespace_secrets=stand_in_secrets(objects),
    )
    for variable in [v for v in os.environ if v.startswith("EMOTION_STREAM_")]:
        monkeypatch.delenv(variable)
    for variable, value in pod_env(objects, pod, volumes).items():
        monkeypatch.setenv(variable, value)
    command = objects.worker_container["command"] + objects.worker_container["args"]
    assert command[:2] == ["emotion-stream", "worker"]
    try:
        settings = build_settings(command[2:])
    except ValidationError as error:
        pytest.fail(f"the worker refuses {name}'s settings:\n{describe_validation_error(error)}")
    env = env_of(objects.worker_container)
    assert settings.worker_id == pod
    assert settings.security_protocol == env["EMOTION_STREAM_SECURITY_PROTOCOL"]["value"]
    if "EMOTION_STREAM_SASL_PASSWORD_FILE" in env:
        assert settings.sasl_password is not None, "the password file was not read"


def test_worker_identity_is_the_pod_name(matrix: dict[tuple[str, str], Rendered]) -> None:
    """Stable ordinal names -> stable worker ids -> stable transactional ids."""
    objects = rendered(matrix, "exactly-once")
    env = env_of(objects.worker_container)
    assert env["EMOTION_STREAM_WORKER_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    assert env["EMOTION_STREAM_DELIVERY"]["value"] == "exactly_once"
    # No explicit id: the worker derives <consumer_group>-<worker_id>, unique per ordinal.
    assert "EMOTION_STREAM_TRANSACTIONAL_ID" not in env
    assert objects.worker["kind"] == "StatefulSet"
    assert env["EMOTION_STREAM_COMMIT_INTERVAL_MS"]["value"] == "2000"


def test_termination_grace_outlasts_the_worker_drain(
    matrix: dict[tuple[str, str], Rendered],
) -> None:
    """SIGTERM -> in-flight batches get one Triton deadline, then a flush of up to
    FLUSH_TIMEOUT_S, the commit, and the clients' close: Kubernetes must not SIGKILL
    before that."""
    triton_timeout = WorkerSettings.model_fields["triton_timeout_s"].default
    producer_close_s = 5  # worker/transport/publisher.py: producer.close(timeout=5)
    drain = min(triton_timeout, FLUSH_TIMEOUT_S) + FLUSH_TIMEOUT_S + producer_close_s
    for (name, _), objects in matrix.items():
        grace = objects.worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > drain, f"{name}: {grace} s <= the worker's drain bound {drain} s"


@pytest.mark.parametrize("name", sorted(CASES))
def test_probes_and_ports_agree(matrix: dict[tuple[str, str], Rendered], name: str) -> None:
    objects = rendered(matrix, name)
    worker = objects.worker_container
    port = {p["name"]: p["containerPort"] for p in worker["ports"]}["metrics"]
    assert env_of(worker)["EMOTION_STREAM_METRICS_PORT"]["value"] == str(port)
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    service = objects.one("Service", "worker")
    assert service["spec"]["clusterIP"] == "None"
    assert objects.worker["spec"]["serviceName"] == service["metadata"]["name"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    if objects.of_kind("Deployment"):
        triton = container(objects.one("Deployment", "triton"), "triton")
        ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
        for flag, port_name in (("--http-port", "http"), ("--grpc-port", "grpc")):
            assert f"{flag}={ports[port_name]}" in triton["args"]
        assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        url = env_of(worker)["EMOTION_STREAM_TRITON_URL"]["value"]
        triton_service = objects.one("Service", "triton")
        grpc = {p["name"]: p["port"] for p in triton_service["spec"]["ports"]}["grpc"]
        assert url == f"{triton_service['metadata']['name']}:{grpc}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_container_runs_non_root_on_a_read_only_root(
    matrix: dict[tuple[str, str], Rendered], name: str
) -> None:
    for workload in workloads(rendered(matrix, name)):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for spec in all_containers(workload):
            context = spec["securityContext"]
            where = f"{workload['metadata']['name']}/{spec['name']}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where


def test_a_disruption_budget_takes_workers_one_at_a_time(
    matrix: dict[tuple[str, str], Rendered],
) -> None:
    objects = rendered(matrix, "default")
    budget = objects.one("PodDisruptionBudget", "worker")
    assert budget["spec"]["maxUnavailable"] == 1
    assert (
        budget["spec"]["selector"]["matchLabels"]
        == objects.worker["spec"]["selector"]["matchLabels"]
    )


# --------------------------------------------------------------------------- secrets


def secret_files(workload: dict[str, Any], spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Path in the container -> (Secret name, key) for every secret volume item mounted."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    files = {}
    for mount in spec.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert mount.get("readOnly") is True, mount
        for item in secret["items"]:
            files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


@pytest.mark.parametrize("name", ["sasl-ssl", "sasl-password"])
def test_kafka_secrets_reach_the_worker_only_as_files(
    matrix: dict[tuple[str, str], Rendered], name: str
) -> None:
    objects = rendered(matrix, name)
    worker = objects.worker_container
    env = env_of(worker)
    files = secret_files(objects.worker, worker)
    assert "EMOTION_STREAM_SASL_PASSWORD" not in env
    for item in env.values():
        assert "secretKeyRef" not in item.get("valueFrom", {}), item
    file_settings = {
        n: item["value"]
        for n, item in env.items()
        if n.endswith(("_FILE", "_CAFILE", "_CERTFILE", "_KEYFILE"))
    }
    assert "EMOTION_STREAM_SASL_PASSWORD_FILE" in file_settings
    for setting, path in file_settings.items():
        assert path in files, f"{setting}={path} names no mounted secret file: {sorted(files)}"
    if name == "sasl-password":
        password = "chart-test-password-not-a-real-one"
        secret = objects.one("Secret")
        name_, key = files[file_settings["EMOTION_STREAM_SASL_PASSWORD_FILE"]]
        assert secret["metadata"]["name"] == name_
        assert base64.b64decode(secret["data"][key]).decode() == password
        for workload in workloads(objects):
            assert password not in str(workload), "the password leaked into a workload"
    else:
        assert files[file_settings["EMOTION_STREAM_SASL_PASSWORD_FILE"]] == (
            "emotion-worker",
            "password",
        )
        assert files[file_settings["EMOTION_STREAM_SSL_CAFILE"]] == (
            "prod-kafka-cluster-ca-cert",
            "ca.crt",
        )
        assert not objects.of_kind("Secret"), "an existing Secret must not be duplicated"


def test_keda_authenticates_with_the_workers_secrets(
    matrix: dict[tuple[str, str], Rendered],
) -> None:
    objects = rendered(matrix, "sasl-ssl")
    auth = objects.one("TriggerAuthentication")
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    worker_files = set(secret_files(objects.worker, objects.worker_container).values())
    assert set(refs.values()) <= worker_files
    assert set(refs) == {"password", "ca", "cert", "key"}
    assert auth["spec"]["env"] == [
        {"parameter": "username", "name": "EMOTION_STREAM_SASL_USERNAME", "containerName": "worker"}
    ]
    trigger = objects.one("ScaledObject")["spec"]["triggers"][0]
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    assert trigger["metadata"]["tls"] == "enable"
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}


# --------------------------------------------------------------------------- scaling


def test_keda_scales_the_statefulset_by_input_lag_up_to_the_partitions(
    matrix: dict[tuple[str, str], Rendered],
) -> None:
    objects = rendered(matrix, "keda")
    scaled = objects.one("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": objects.worker["metadata"]["name"],
    }
    assert scaled["maxReplicaCount"] == 8  # kafka.topics.partitions in keda-values.yaml
    assert scaled["minReplicaCount"] == 0
    metadata = scaled["triggers"][0]["metadata"]
    assert metadata["topic"] == "tweets"
    assert (
        metadata["consumerGroup"]
        == env_of(objects.worker_container)["EMOTION_STREAM_CONSUMER_GROUP"]["value"]
    )
    # The worker starts a new group at auto_offset_reset; KEDA must count lag the same way.
    assert metadata["offsetResetPolicy"] == WorkerSettings.model_fields["auto_offset_reset"].default
    assert int(metadata["activationLagThreshold"]) > 0
    assert metadata["allowIdleConsumers"] == "false"
    down = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    grace = objects.worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": grace}]
    # KEDA owns the replica count: the StatefulSet must not fight it on every upgrade.
    assert "replicas" not in objects.worker["spec"]
    assert not objects.of_kind("HorizontalPodAutoscaler")


def test_hpa_scales_on_cpu_when_keda_is_absent(matrix: dict[tuple[str, str], Rendered]) -> None:
    objects = rendered(matrix, "hpa")
    hpa = objects.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["kind"] == "StatefulSet"
    assert hpa["maxReplicas"] == 6  # the default kafka.topics.partitions
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in objects.worker["spec"]
    assert not objects.of_kind("ScaledObject")
    assert rendered(matrix, "default").worker["spec"]["replicas"] == 2


def test_strimzi_topics_follow_the_worker_topics(matrix: dict[tuple[str, str], Rendered]) -> None:
    objects = rendered(matrix, "exactly-once")
    topics = {t["spec"]["topicName"]: t for t in objects.of_kind("KafkaTopic")}
    env = env_of(objects.worker_container)
    assert set(topics) == {
        env[f"EMOTION_STREAM_{n}_TOPIC"]["value"] for n in ("INPUT", "OUTPUT", "DLQ")
    }
    assert topics["tweets"]["spec"]["partitions"] == 12
    assert topics["emotions"]["spec"]["partitions"] == 12
    assert topics["tweets.dlq"]["spec"]["partitions"] == 1
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics.values()} == {
        "prod-kafka"
    }
    assert not rendered(matrix, "default").of_kind("KafkaTopic")


# --------------------------------------------------------------------------- Triton, models


def test_gpu_switch(matrix: dict[tuple[str, str], Rendered]) -> None:
    gpu = rendered(matrix, "gpu")
    triton = gpu.one("Deployment", "triton")
    spec = container(triton, "triton")
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-config-name=gpu" in spec["args"]
    pod = triton["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    # The export Job writes the GPU instance-group config the flag selects.
    job = container(gpu.one("Job", "exporter"), "exporter")
    assert "s/KIND_CPU/KIND_GPU/" in job["args"][0] and "configs/gpu.pbtxt" in job["args"][0]
    wait = env_of(pod["initContainers"][0])
    assert wait["MODEL_CONFIG"]["value"] == "/models/emotion-classifier/configs/gpu.pbtxt"
    cpu = container(rendered(matrix, "default").one("Deployment", "triton"), "triton")
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert "--model-config-name=gpu" not in cpu["args"]


def test_export_job_fills_the_volume_triton_and_workers_read(
    matrix: dict[tuple[str, str], Rendered],
) -> None:
    objects = rendered(matrix, "default")
    claim = objects.one("PersistentVolumeClaim", "models")["metadata"]["name"]
    job = objects.one("Job", "exporter")
    job_spec = container(job, "exporter")
    assert job_spec["image"].startswith("emotion-stream/exporter:")
    assert job_spec["args"][2:6] == [
        "export",
        "--model",
        "cardiffnlp/twitter-roberta-base-emotion",
        "--output",
    ]
    for workload in (job, objects.worker, objects.one("Deployment", "triton")):
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim
    triton = container(objects.one("Deployment", "triton"), "triton")
    assert "--model-repository=/models" in triton["args"]
    assert env_of(objects.worker_container)["EMOTION_STREAM_MODEL_REPOSITORY"]["value"] == "/models"


def test_object_storage_repository(matrix: dict[tuple[str, str], Rendered]) -> None:
    s3 = rendered(matrix, "object-storage-s3")
    assert not s3.of_kind("Job") and not s3.of_kind("PersistentVolumeClaim")
    triton = container(s3.one("Deployment", "triton"), "triton")
    assert (
        "--model-repository=s3://https://minio.storage.svc:9000/models/emotion-stream"
        in (triton["args"])
    )
    triton_env = env_of(triton)
    credentials = triton_env["AWS_SHARED_CREDENTIALS_FILE"]["value"]
    assert credentials in secret_files(s3.one("Deployment", "triton"), triton)
    assert triton_env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
    fetch = next(
        c
        for c in s3.worker["spec"]["template"]["spec"]["initContainers"]
        if c["name"] == "fetch-model-files"
    )
    assert fetch["command"] == ["aws"]
    assert fetch["args"][:2] == ["--endpoint-url", "https://minio.storage.svc:9000"]
    assert fetch["args"][-2:] == [
        "s3://models/emotion-stream/emotion-classifier",
        "/models/emotion-classifier",
    ]
    assert env_of(fetch)["AWS_SHARED_CREDENTIALS_FILE"]["value"] == credentials

    gs = rendered(matrix, "object-storage-gs")
    triton = container(gs.one("Deployment", "triton"), "triton")
    assert "--model-repository=gs://example-models/emotion-stream" in triton["args"]
    fetch = gs.worker["spec"]["template"]["spec"]["initContainers"][0]
    assert "gcloud storage cp" in fetch["args"][0]
    assert "gs://example-models/emotion-stream/emotion-classifier/tokenizer" in fetch["args"][0]


# --------------------------------------------------------------------------- images


def images(node: Any) -> list[str]:
    """Every container image in an object (pods, pod templates, Jobs, CronJobs...)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"containers", "initContainers", "ephemeralContainers"}:
                found += [str(spec.get("image", "")) for spec in value]
            else:
                found += images(value)
    elif isinstance(node, list):
        for item in node:
            found += images(item)
    return found


def moving_reference(image: str) -> str | None:
    """Why ``image`` names no fixed release (None: a versioned tag, or a digest).

    ``repo@sha256:...`` is fixed; a bare ``repo`` means ``latest``; a tag without a
    version number in it (``latest``, ``slim``, ``stable``) is a name the vendor moves from
    release to release. A colon before the last ``/`` is a registry's port.
    """
    name, _, digest = image.partition("@")
    if digest:
        return None
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    if not tag:
        return "no tag (Kubernetes pulls latest)"
    if not any(character.isdigit() for character in tag):
        return f"the moving tag {tag}"
    return None


@pytest.mark.parametrize(
    ("image", "moving"),
    [
        ("amazon/aws-cli:latest", True),
        ("amazon/aws-cli", True),
        ("registry.local:5000/emotion-stream/worker", True),
        ("emotion-stream/worker:", True),
        ("gcr.io/google.com/cloudsdktool/google-cloud-cli:slim", True),
        ("gcr.io/google.com/cloudsdktool/google-cloud-cli:572.0.0-stable", False),
        ("amazon/aws-cli:2.36.9", False),
        ("registry.local:5000/emotion-stream/worker:0.1.0", False),
        ("nvcr.io/nvidia/tritonserver:24.08-py3", False),
        ("amazon/aws-cli@sha256:" + "0" * 64, False),
    ],
)
def test_moving_image_references_are_recognised(image: str, moving: bool) -> None:
    assert (moving_reference(image) is not None) == moving


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_image_is_pinned(matrix: dict[tuple[str, str], Rendered], name: str) -> None:
    """No rendered container runs ``:latest``, another moving tag or an untagged image:
    what a pod runs must not change with the next pull (the object-storage copy images
    were ``latest`` and ``slim`` once)."""
    found = {image for obj in rendered(matrix, name).objects for image in images(obj)}
    assert found, "no container image rendered"
    moving = {image: why for image in found if (why := moving_reference(image))}
    assert not moving, f"{name}: images not pinned to a release: {moving}"


def test_the_image_check_sees_init_containers(helm: str) -> None:
    """The check reaches the object-storage copy container (an init container)."""
    objects = render(
        helm,
        {
            "modelRepository": {
                "source": "objectStorage",
                "objectStorage": {
                    "url": "s3://bucket/models",
                    "fetchImage": {"s3": "amazon/aws-cli:latest"},
                },
            }
        },
    )
    assert "amazon/aws-cli:latest" in {image for o in objects.objects for image in images(o)}


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"worker": {"terminationGracePeriodSeconds": 30}}, "terminationGracePeriodSeconds"),
        (
            {"worker": {"settings": {"TRITON_TIMEOUT_S": 60}}},
            "TRITON_TIMEOUT_S + 45 s",
        ),
        ({"keda": {"enabled": True}, "hpa": {"enabled": True}}, "exclusive"),
        (
            {"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "PLAIN"}}},
            "kafka.sasl.username",
        ),
        (
            {
                "kafka": {
                    "securityProtocol": "SASL_SSL",
                    "sasl": {"mechanism": "PLAIN", "username": "u"},
                }
            },
            "kafka.sasl.existingSecret",
        ),
        ({"kafka": {"securityProtocol": "SASL_SSL"}}, "kafka.sasl.mechanism"),
        (
            {
                "kafka": {
                    "securityProtocol": "SASL_PLAINTEXT",
                    "sasl": {"mechanism": "PLAIN", "username": "u", "password": "p"},
                }
            },
            "kafka.sasl.allowCleartextPassword: true",
        ),
        (
            {
                "kafka": {
                    "securityProtocol": "SASL_SSL",
                    "sasl": {
                        "mechanism": "SCRAM-SHA-512",
                        "username": "u",
                        "password": "p",
                        "allowCleartextPassword": True,
                    },
                }
            },
            "allowCleartextPassword only applies to SASL_PLAINTEXT with PLAIN",
        ),
        # values.schema.json: Helm itself refuses unknown keys and values outside an enum.
        ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
        ({"kafka": {"bootstrapServer": "x:9092"}}, "'bootstrapServer' not allowed"),
        ({"keda": {"lagTreshold": 5}}, "'lagTreshold' not allowed"),
        ({"kafka": {"sasl": {"mechanism": "SCRAM"}}}, "/kafka/sasl/mechanism"),
        ({"worker": {"settings": {"KAFKA_BOOTSTRAP_SERVERS": "x:1"}}}, "worker.settings"),
        ({"worker": {"settings": {"EMOTION_STREAM_PADDING": "fixed"}}}, "without the"),
        ({"worker": {"delivery": "exactly-once"}}, "/worker/delivery"),
        (
            {"modelRepository": {"source": "objectStorage", "objectStorage": {"url": "/data"}}},
            "s3:// or gs://",
        ),
        ({"triton": {"enabled": False}}, "triton.externalUrl"),
        ({"hpa": {"enabled": True, "minReplicas": 0}}, "hpa.minReplicas"),
        ({"keda": {"enabled": True, "minReplicas": 9}}, "keda.maxReplicas"),
    ],
)
def test_bad_values_are_refused_naming_the_value(
    helm: str, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(RenderError) as refused:
        render(helm, values)
    assert message in str(refused.value)


def test_values_files_live_beside_the_chart() -> None:
    assert VALUES_DIR.is_dir() and len(VALUES_FILES) >= 9
