"""A real Triton server without Docker: pytriton's ``tritonserver`` on 127.0.0.1.

The ``nvidia-pytriton`` wheel carries the ``tritonserver`` binary and its Python backend
(:func:`pytriton_dir` finds it); :class:`TritonServer` serves the Python-backend twin
(:mod:`compose.twin`) of the exporter's model repository and is ready once
``v2/health/ready`` and the model's own readiness answer 200.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from compose.certificates import ServerCertificate
from compose.embedded.service import LOOPBACK, PROBE_TIMEOUT_S, Launch, LocalService
from compose.processes import EmbeddedStackError, ServiceStartError
from compose.twin import TwinError, generate_twin_repository
from emotion_stream.layout import DEFAULT_MODEL_NAME

DEFAULT_TRITON_HTTP_PORT = 8000  # the Compose stack's ports, so `.env` files work for both
DEFAULT_TRITON_GRPC_PORT = 8001
DEFAULT_TRITON_METRICS_PORT = 8002
# Triton loads the twin model, whose stub imports numpy and onnxruntime: ~5-20 s.
TRITON_START_TIMEOUT_S = 120.0
# Triton's grace period for in-flight requests on SIGTERM (its default is 30 s).
TRITON_EXIT_TIMEOUT_S = 10
PYTRITON_DIR_NAME = "pytriton"


@dataclass(frozen=True)
class TritonPorts:
    """Triton's three listeners."""

    grpc: int = DEFAULT_TRITON_GRPC_PORT
    http: int = DEFAULT_TRITON_HTTP_PORT
    metrics: int = DEFAULT_TRITON_METRICS_PORT


def pytriton_dir() -> Path:
    """The installed ``pytriton`` package (it carries ``tritonserver``)."""
    spec = importlib.util.find_spec(PYTRITON_DIR_NAME)
    if spec is None or spec.origin is None:
        raise EmbeddedStackError(
            "triton: nvidia-pytriton is not installed (pip install -e '.[local]')"
        )
    return Path(spec.origin).parent


class TritonServer(LocalService):
    """pytriton's ``tritonserver`` serving the Python-backend twin of a model repository.

    Parameters
    ----------
    state_dir:
        The stack's state folder; the server keeps ``triton/`` in it (twin repository,
        backend folder, log, pid file).
    model_repository:
        The exporter's repository (``onnxruntime_onnx`` models).
    ports:
        gRPC, HTTP and metrics ports.
    model_name:
        The model whose readiness :meth:`start` waits for.
    intra_op_threads:
        onnxruntime threads per model instance when the config does not say (0: all cores).
    die_with_parent:
        Stop the server when the process that started it dies (test fixtures).
    grpc_tls:
        Serve gRPC over TLS with this certificate and key (``--grpc-use-ssl``); clients
        verify it against its CA. HTTP (readiness probes, loopback only) stays plain.
    """

    component = "triton"
    process_name = "triton"
    start_timeout_s = TRITON_START_TIMEOUT_S

    def __init__(
        self,
        state_dir: Path,
        model_repository: Path,
        ports: TritonPorts | None = None,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        intra_op_threads: int = 0,
        die_with_parent: bool = False,
        grpc_tls: ServerCertificate | None = None,
    ) -> None:
        home = state_dir.resolve() / "triton"
        self.twin_repository = home / "models"
        super().__init__(
            "triton", home, marker=self.twin_repository, die_with_parent=die_with_parent
        )
        self.grpc_tls = grpc_tls
        self.model_repository = model_repository
        self.ports = ports or TritonPorts()
        self.model_name = model_name
        self.intra_op_threads = intra_op_threads
        self.backend_dir = self.home / "backends"

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return f"{LOOPBACK}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.metrics}/metrics"

    @classmethod
    def unconfigured(cls, state_dir: Path) -> Self:
        return cls(state_dir, Path())

    def endpoint(self) -> dict[str, Any]:
        return {
            "grpc": self.ports.grpc,
            "http": self.ports.http,
            "metrics": self.ports.metrics,
            "model_name": self.model_name,
            "model_repository": str(self.model_repository.resolve()),
        }

    def restore(self, endpoint: Mapping[str, Any]) -> None:
        self.ports = TritonPorts(
            int(endpoint["grpc"]), int(endpoint["http"]), int(endpoint["metrics"])
        )
        self.model_name = str(endpoint.get("model_name", self.model_name))
        self.model_repository = Path(str(endpoint.get("model_repository", "")))

    def listeners(self) -> dict[str, int]:
        return {"gRPC": self.ports.grpc, "HTTP": self.ports.http, "metrics": self.ports.metrics}

    def _http_ok(self, path: str) -> bool:
        # No proxy for loopback whatever the environment says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.http_url}{path}", timeout=PROBE_TIMEOUT_S) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def is_ready(self) -> bool:
        """Server ready and the model loaded (``v2/health/ready``, ``v2/models/<m>/ready``)."""
        return self._http_ok("/v2/health/ready") and self._http_ok(
            f"/v2/models/{self.model_name}/ready"
        )

    def not_ready_message(self) -> str:
        return f"model {self.model_name!r} not ready on {self.http_url}"

    def _prepare_backend_dir(self) -> Path:
        """``<dir>/python/`` with the backend library, its utils and the 3.11 stub."""
        pytriton = pytriton_dir()
        python_dir = self.backend_dir / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        sources = {
            "libtriton_python.so": pytriton / "tritonserver/backends/python/libtriton_python.so",
            "triton_python_backend_utils.py": (
                pytriton / "tritonserver/backends/python/triton_python_backend_utils.py"
            ),
            # The stub must match the Python the model's imports come from.
            "triton_python_backend_stub": (
                pytriton / f"tritonserver/python_backend_stubs/{version}/triton_python_backend_stub"
            ),
        }
        for name, source in sources.items():
            if not source.is_file():
                raise ServiceStartError(self.component, f"missing from nvidia-pytriton: {source}")
            target = python_dir / name
            if not target.is_file() or target.stat().st_size != source.stat().st_size:
                shutil.copy2(source, target)
        return self.backend_dir

    def _environment(self, pytriton: Path) -> dict[str, str]:
        """tritonserver's environment: the wheel's libraries, and this venv first on PATH.

        The Python backend's stub imports numpy and onnxruntime from the environment whose
        ``bin/`` comes first on PATH.
        """
        env = dict(os.environ)
        libs = pytriton.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            part for part in (str(libs), env.get("LD_LIBRARY_PATH", "")) if part
        )
        env["PATH"] = os.pathsep.join((str(Path(sys.prefix) / "bin"), env.get("PATH", "")))
        env["VIRTUAL_ENV"] = sys.prefix
        return env

    def argv(self, binary: Path) -> list[str]:
        """tritonserver's command line: the twin, our backend folder, loopback listeners."""
        return [
            str(binary),
            f"--model-repository={self.twin_repository}",
            f"--backend-directory={self.backend_dir}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={TRITON_EXIT_TIMEOUT_S}",
            *self._grpc_tls_arguments(),
        ]

    def _grpc_tls_arguments(self) -> list[str]:
        if self.grpc_tls is None:
            return []
        return [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={self.grpc_tls.cert}",
            f"--grpc-server-key={self.grpc_tls.key}",
            f"--grpc-root-cert={self.grpc_tls.ca_cert}",
        ]

    def command(self) -> Launch:
        """pytriton's ``tritonserver`` in ``home`` with the wheel's libraries.

        Raises :class:`~compose.processes.EmbeddedStackError` when pytriton is missing and
        :class:`ServiceStartError` when it carries no executable ``tritonserver``.
        """
        pytriton = pytriton_dir()
        binary = pytriton / "tritonserver" / "bin" / "tritonserver"
        if shutil.which(str(binary)) is None:
            raise ServiceStartError(self.component, f"no executable tritonserver at {binary}")
        return Launch(self.argv(binary), env=self._environment(pytriton), cwd=self.home)

    def prepare(self) -> None:
        """Generate the twin repository afresh and copy the Python backend next to it.

        Raises :class:`ServiceStartError` when the repository holds no ONNX model.
        """
        if self.twin_repository.exists():
            shutil.rmtree(self.twin_repository)
        try:
            generate_twin_repository(
                self.model_repository,
                self.twin_repository,
                intra_op_threads=self.intra_op_threads,
            )
        except TwinError as error:
            raise ServiceStartError(self.component, str(error)) from error
        self._prepare_backend_dir()
