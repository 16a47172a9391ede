"""Render the Helm chart for tests: ``helm template`` with values, parsed into objects.

Helm comes from ``charts/ci/helm.sh`` (built from its Go module once, cached under
``.cache/helm/``), or ``$HELM`` when set. Every render names the Kubernetes version it
targets (``--kube-version``), the same one the objects are then validated against.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "emotion-stream"
HELM_SCRIPT = ROOT / "charts" / "ci" / "helm.sh"
# The values matrix: one file per combination the chart promises (chart-testing's layout).
VALUES_DIR = CHART / "ci"
VALUES_FILES = sorted(VALUES_DIR.glob("*-values.yaml"))
# Kubernetes versions the rendered objects are validated against: the newest schema
# kubernetes-validate ships, and the oldest the chart's kubeVersion admits.
KUBE_VERSIONS = ("1.37.0", "1.31.0")
CURRENT_KUBE_VERSION = KUBE_VERSIONS[0]
RELEASE = "es"
NAMESPACE = "emotion"
HELM_TIMEOUT_S = 600  # the first call may build Helm from source (minutes on 2 busy cores)


class RenderError(Exception):
    """``helm template`` refused the values; ``str()`` is Helm's message."""


def helm_binary() -> str:
    """``$HELM``, else the cached build (built now if missing)."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    done = subprocess.run(
        ["bash", str(HELM_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"charts/ci/helm.sh failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Rendered:
    """The objects one ``helm template`` produced."""

    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    def one(self, kind: str, component: str | None = None) -> dict[str, Any]:
        found = [
            o
            for o in self.of_kind(kind)
            if component is None
            or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} {component or ''}, got {len(found)}"
        return found[0]

    @property
    def worker(self) -> dict[str, Any]:
        return self.one("StatefulSet", "worker")

    @property
    def worker_container(self) -> dict[str, Any]:
        return container(self.worker, "worker")


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    """The container ``name`` of a workload's pod template."""
    for candidate in workload["spec"]["template"]["spec"]["containers"]:
        if candidate["name"] == name:
            return dict(candidate)
    raise AssertionError(f"no container {name} in {workload['metadata']['name']}")


def render(
    helm: str,
    values: dict[str, Any] | None = None,
    values_files: list[Path] | None = None,
    kube_version: str = CURRENT_KUBE_VERSION,
) -> Rendered:
    """``helm template`` the chart with ``values_files`` then ``values`` (JSON is YAML)."""
    command = [
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube_version,
    ]
    for path in values_files or []:
        command += ["--values", str(path)]
    if values:
        command += ["--values", "-"]
    done = subprocess.run(
        command,
        input=json.dumps(values or {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return Rendered(objects)
