"""The chart's worker, run for real: two processes started from the rendered StatefulSet.

No cluster runs here, so the test plays kubelet for the rendered worker container: the
same command and args, the same env (the pod name from ``fieldRef metadata.name``), the
same volumes (the model volume is the tiny exported repository, ``/tmp`` an empty folder
per pod). Three substitutions stand in for the cluster, each checked against the rendered
objects first:

- Triton's Service name and port -> the test Triton's gRPC address, after checking the
  worker's ``EMOTION_STREAM_TRITON_URL`` names that Service and its gRPC port, and that
  the port leads to the port Triton is told to serve gRPC on;
- the pod's metrics port -> a free loopback port per process (pods each have an IP),
  after checking ``EMOTION_STREAM_METRICS_PORT`` is the container port the probes use;
- Kafka's bootstrap address is a value; the test sets it to the test broker.

Then it probes the rendered readiness and liveness paths, feeds tweets, checks every id is
classified (exactly once for ``exactly_once``, as the pods' ordinal names give each its own
transactional id), and stops each pod with SIGTERM, which must end within the rendered
``terminationGracePeriodSeconds``. A wrong variable, path or port fails here.

Over PLAINTEXT (the embedded broker's listener). The SASL rendering is checked offline by
``test_chart_render.py``; the worker reading ``EMOTION_STREAM_SASL_PASSWORD_FILE`` is not
on main yet (pending the `harden` branch), so no SASL run here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.chart.render import RELEASE, Rendered, container, render
from tests.support.delivery import check_delivery
from tests.support.network import free_port, http_status
from tests.support.pipeline import DELIVERY_MODES, EXACTLY_ONCE, PipelineFactory
from tests.support.waiting import wait_until
from tests.support.worker_process import WorkerRun

pytestmark = [pytest.mark.chart, pytest.mark.integration]

PARTITIONS = 2
REPLICAS = 2
TWEETS = 200
# Worker start-up on a loaded 2-core machine (tokenizer stack import), as the harness allows.
READY_TIMEOUT_S = 120.0
RESULTS_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LocalPod:
    """One replica of the rendered worker as a local process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    metrics_port: int
    readiness_path: str
    liveness_path: str


def pods_from(
    objects: Rendered,
    *,
    replicas: int,
    triton_url: str,
    volume_dirs: Callable[[str, str], Path],
) -> list[LocalPod]:
    """The rendered worker container as ``replicas`` local processes (see module doc)."""
    statefulset = objects.worker
    worker = objects.worker_container
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}

    # The image's PATH holds the console scripts; here the virtualenv's bin does.
    executable = Path(sys.executable).parent / worker["command"][0]
    assert executable.exists(), f"the rendered command {worker['command']} is no console script"
    argv = [str(executable), *worker.get("args", [])]

    triton_service = objects.one("Service", "triton")
    service_ports = {p["name"]: p for p in triton_service["spec"]["ports"]}
    triton = container(objects.one("Deployment", "triton"), "triton")
    triton_ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    grpc = service_ports["grpc"]
    assert f"--grpc-port={triton_ports[grpc['targetPort']]}" in triton["args"]
    expected_triton = f"{triton_service['metadata']['name']}:{grpc['port']}"

    pods = []
    for ordinal in range(replicas):
        pod = f"{statefulset['metadata']['name']}-{ordinal}"
        env: dict[str, str] = {}
        for item in worker["env"]:
            if "value" in item:
                value = str(item["value"])
            else:
                field = item["valueFrom"]["fieldRef"]["fieldPath"]
                assert field == "metadata.name", f"{item['name']}: no stand-in for {field}"
                value = pod
            # A path inside a mounted volume -> the same path inside its local stand-in
            # (the deepest mount wins, as in a container).
            for mount_path in sorted(mounts, key=len, reverse=True):
                if value == mount_path or value.startswith(mount_path + "/"):
                    volume = mounts[mount_path]
                    kind = next(k for k in volumes[volume] if k != "name")
                    local = volume_dirs(volume, pod)
                    assert local.exists(), f"{item['name']}={value}: {kind} volume {volume}"
                    value = str(local) + value[len(mount_path) :]
                    break
            env[item["name"]] = value
        assert env["EMOTION_STREAM_TRITON_URL"] == expected_triton
        env["EMOTION_STREAM_TRITON_URL"] = triton_url
        assert env["EMOTION_STREAM_METRICS_PORT"] == str(ports["metrics"])
        port = free_port()
        env["EMOTION_STREAM_METRICS_PORT"] = str(port)
        # A pod binds 0.0.0.0 on its own address; on this shared machine, loopback only.
        env["EMOTION_STREAM_METRICS_HOST"] = "127.0.0.1"
        readiness = worker["readinessProbe"]["httpGet"]
        liveness = worker["livenessProbe"]["httpGet"]
        assert readiness["port"] == liveness["port"] == "metrics"
        pods.append(
            LocalPod(pod, argv, env, port, readiness["path"], liveness["path"]),
        )
    return pods


def start(pod: LocalPod, log_dir: Path) -> WorkerRun:
    # The process gets the machine's environment (PATH, the virtualenv) but no worker
    # setting other than the rendered ones.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_STREAM_")}
    env.update(pod.env)
    # Four test suites share two cores: keep tokenizer threads from multiplying.
    env.update({"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    return WorkerRun.start(pod.name, env, log_dir / f"{pod.name}.log", argv=pod.argv)


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
    objects = render(
        helm,
        {
            "kafka": {
                "bootstrapServers": pipeline.bootstrap_servers,
                "consumerGroup": pipeline.group,
                "topics": {
                    "input": pipeline.input_topic,
                    "output": pipeline.output_topic,
                    "dlq": pipeline.dlq_topic,
                    "partitions": PARTITIONS,
                },
            },
            "worker": {
                "replicas": REPLICAS,
                "delivery": delivery,
                "settings": {"LOG_SUMMARY_INTERVAL_S": 2},
            },
        },
    )
    assert objects.worker["spec"]["replicas"] == REPLICAS
    assert objects.worker["metadata"]["name"].startswith(RELEASE)

    def volume_dirs(volume: str, pod: str) -> Path:
        if volume == "models":
            return tiny_model_repository
        local = tmp_path / pod / volume  # an emptyDir: one per pod
        local.mkdir(parents=True, exist_ok=True)
        return local

    pods = pods_from(
        objects, replicas=REPLICAS, triton_url=triton_server.grpc_url, volume_dirs=volume_dirs
    )
    runs = []
    for pod in pods:
        run = start(pod, tmp_path)
        pipeline.runs.append(run)  # killed by the fixture whatever happens
        runs.append(run)

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
    check_delivery(pipeline, ids, max_extra_results=0, label=f"chart {delivery}")

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
        run.terminate()
    for run in runs:
        assert run.wait(grace) == 0, run.log_tail()
