"""The rendered worker pod as local processes: the chart tests play kubelet.

No cluster runs here, so for the rendered worker StatefulSet this module does what a
kubelet would, on the local machine:

- **volumes**: an ``emptyDir`` is an empty folder per pod; a ``secret`` (or ``configMap``)
  volume is written the way kubelet's atomic writer projects it — the chosen keys (all of
  them without ``items``) as files with the volume's mode in a hidden timestamped folder,
  a ``..data`` link to it and one link per file (``password -> ..data/password``). The
  Secret's bytes come from the rendered objects when the chart makes it, otherwise from
  the Secrets the test says exist in the namespace (a Strimzi ``KafkaUser``'s, a CA's); a
  Secret neither rendered nor given fails, as the pod would never start. Other volumes
  (the model claim) need a stand-in folder from the test;
- **env**: the literal values, the pod name for ``fieldRef metadata.name``; a path inside
  a mounted volume becomes the same path inside the volume's local folder (the deepest
  mount wins, as in a container), and must exist when the volume is a projected Secret or
  ConfigMap: a chart naming a file it never mounts fails here.

:func:`pods_from` adds the substitutions that stand in for the cluster's network (see
``test_chart_worker.py``); :func:`start` runs one pod's container as a process.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.chart.render import Rendered, container
from tests.support.network import free_port
from tests.support.worker_process import WorkerRun

# Secrets that exist in the namespace before the install: name -> key -> bytes.
NamespaceSecrets = Mapping[str, Mapping[str, bytes]]

# Kubernetes' default mode of projected files (SecretVolumeSource.defaultMode).
DEFAULT_MODE = 0o644
PROJECTED = ("secret", "configMap")
# The folder kubelet's atomic writer points ..data at (any name starting with "..").
PROJECTION_DIR = "..2026_01_01_00_00_00.000000000"


@dataclass(frozen=True)
class LocalPod:
    """One replica of the rendered worker as a local process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    metrics_port: int
    readiness_path: str
    liveness_path: str


def pod_spec(objects: Rendered) -> dict[str, Any]:
    return dict(objects.worker["spec"]["template"]["spec"])


def rendered_data(objects: Rendered, kind: str, name: str) -> dict[str, bytes] | None:
    """The bytes of a Secret or ConfigMap the chart renders (None: not rendered)."""
    for obj in objects.of_kind(kind):
        if obj["metadata"]["name"] != name:
            continue
        data: dict[str, bytes] = {}
        if kind == "Secret":
            data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
            data.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
        else:
            data.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data
    return None


def referenced_secrets(objects: Rendered) -> dict[str, set[str]]:
    """Secret name -> the keys the worker pod's volumes ask of it."""
    wanted: dict[str, set[str]] = {}
    for volume in pod_spec(objects)["volumes"]:
        if "secret" in volume:
            source = volume["secret"]
            keys = wanted.setdefault(source["secretName"], set())
            keys.update(item["key"] for item in source.get("items", []))
    return wanted


def stand_in_secrets(objects: Rendered) -> dict[str, dict[str, bytes]]:
    """Placeholder bytes for every Secret the pod mounts but the chart does not make."""
    return {
        name: {key: f"stand-in for {name}/{key}".encode() for key in keys}
        for name, keys in referenced_secrets(objects).items()
        if rendered_data(objects, "Secret", name) is None
    }


def project(files: Mapping[str, bytes], target: Path, mode: int) -> None:
    """Write ``files`` into ``target`` as kubelet's atomic writer lays them out."""
    data_dir = target / PROJECTION_DIR
    data_dir.mkdir(parents=True)
    for relative, content in files.items():
        path = data_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    (target / "..data").symlink_to(PROJECTION_DIR)
    for top in {Path(relative).parts[0] for relative in files}:
        (target / top).symlink_to(Path("..data") / top)


def mount_volumes(
    objects: Rendered,
    pod: str,
    root: Path,
    *,
    stand_ins: Mapping[str, Path],
    namespace_secrets: NamespaceSecrets,
) -> dict[str, Path]:
    """Volume name -> the local folder holding what the pod would see there."""
    mounted: dict[str, Path] = {}
    for volume in pod_spec(objects)["volumes"]:
        name = volume["name"]
        kind = next(k for k in volume if k != "name")
        if name in stand_ins:
            mounted[name] = stand_ins[name]
        elif kind == "emptyDir":
            mounted[name] = root / pod / name
            mounted[name].mkdir(parents=True)
        elif kind in PROJECTED:
            source = volume[kind]
            if kind == "secret":
                object_kind, object_name = "Secret", source["secretName"]
            else:
                object_kind, object_name = "ConfigMap", source["name"]
            data = rendered_data(objects, object_kind, object_name)
            if data is None and kind == "secret" and object_name in namespace_secrets:
                data = dict(namespace_secrets[object_name])
            assert data is not None, (
                f"volume {name}: {object_kind} {object_name} is neither rendered nor in the "
                "namespace: the pod would never start"
            )
            items = source.get("items") or [{"key": key, "path": key} for key in data]
            files = {}
            for item in items:
                assert item["key"] in data, (
                    f"volume {name}: {object_kind} {object_name} has no key {item['key']} "
                    f"(it has {sorted(data)})"
                )
                files[item["path"]] = data[item["key"]]
            mounted[name] = root / pod / name
            project(files, mounted[name], int(source.get("defaultMode", DEFAULT_MODE)))
        else:
            raise AssertionError(f"volume {name}: no local stand-in for a {kind} volume")
    return mounted


def pod_env(
    objects: Rendered,
    pod: str,
    volumes: Mapping[str, Path],
    container_name: str = "worker",
) -> dict[str, str]:
    """The container's environment as the process in pod ``pod`` would see it (paths local)."""
    spec = container(objects.worker, container_name)
    kinds = {v["name"]: next(k for k in v if k != "name") for v in pod_spec(objects)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec.get("volumeMounts", [])}
    env: dict[str, str] = {}
    for item in spec.get("env", []):
        if "value" in item:
            value = str(item["value"])
        else:
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.name", f"{item['name']}: no stand-in for {field}"
            value = pod
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path + "/"):
                volume = mounts[mount_path]
                local = volumes[volume] / value[len(mount_path) :].lstrip("/")
                if kinds[volume] in PROJECTED:
                    holds = sorted(
                        p.name for p in volumes[volume].iterdir() if not p.name.startswith("..")
                    )
                    assert local.is_file(), (
                        f"{item['name']}={value}: no such file in the {kinds[volume]} "
                        f"volume {volume} (it holds {holds})"
                    )
                value = str(local)
                break
        env[item["name"]] = value
    return env


def pods_from(
    objects: Rendered,
    *,
    replicas: int,
    triton_url: str,
    root: Path,
    stand_ins: Mapping[str, Path],
    namespace_secrets: NamespaceSecrets | None = None,
) -> list[LocalPod]:
    """The rendered worker container as ``replicas`` local processes.

    Besides the kubelet's part (volumes, env), two substitutions stand in for the
    cluster's network, each checked against the rendered objects first: Triton's Service
    name and port become ``triton_url`` (after checking the worker's
    ``EMOTION_STREAM_TRITON_URL`` names that Service and its gRPC port, and that the port
    leads to the one Triton is told to serve gRPC on); the pod's metrics port becomes a
    free loopback port per process (after checking ``EMOTION_STREAM_METRICS_PORT`` is the
    container port the probes use). Kafka's address is a value the test sets.
    """
    statefulset = objects.worker
    worker = objects.worker_container
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
        volumes = mount_volumes(
            objects,
            pod,
            root,
            stand_ins=stand_ins,
            namespace_secrets=namespace_secrets or {},
        )
        env = pod_env(objects, pod, volumes)
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
        pods.append(LocalPod(pod, argv, env, port, readiness["path"], liveness["path"]))
    return pods


def start(pod: LocalPod, log_dir: Path) -> WorkerRun:
    """Start the pod's container as a process logging to ``<log_dir>/<pod>.log``."""
    # The process gets the machine's environment (PATH, the virtualenv) but no worker
    # setting other than the rendered ones.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_STREAM_")}
    env.update(pod.env)
    # Four test suites share two cores: keep tokenizer threads from multiplying.
    env.update({"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    return WorkerRun.start(pod.name, env, log_dir / f"{pod.name}.log", argv=pod.argv)
