"""``tritonserver`` of the stand-in Triton image: NVIDIA's command line, pytriton's server.

The image stands in for ``nvcr.io/nvidia/tritonserver`` where no registry is reachable.
It takes the real server's command line unchanged; the ``onnxruntime_onnx`` models of
``--model-repository`` are served through their Python-backend twin
(:mod:`compose.twin`, the same twin ``emotion-stream local up`` runs), generated into a
scratch folder at each start, and every other option goes to pytriton's ``tritonserver``
(Triton 2.51) as given.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from compose.embedded import pytriton_dir
from compose.twin import generate_twin_repository

# Filled at image build time: python/ with libtriton_python.so, its utils and the 3.11 stub.
BACKEND_DIR = Path("/opt/tritonserver/backends")
REPOSITORY_OPTIONS = ("--model-repository", "--model-store")


def split_repository(argv: list[str]) -> tuple[Path, list[str]]:
    """The ``--model-repository`` value and every other argument, in order."""
    repository: Path | None = None
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.partition("=")
        if name in REPOSITORY_OPTIONS:
            repository = Path(value if has_value else next(args, ""))
        else:
            rest.append(arg)
    if repository is None or not str(repository):
        raise SystemExit("tritonserver (stand-in): --model-repository is required")
    return repository, rest


def main(argv: list[str]) -> NoReturn:
    """Write the twin of the repository, then become pytriton's ``tritonserver``."""
    repository, rest = split_repository(argv)
    twin = Path(tempfile.mkdtemp(prefix="triton-twin-"))
    generate_twin_repository(repository, twin)
    pytriton = pytriton_dir()
    binary = pytriton / "tritonserver" / "bin" / "tritonserver"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        part
        for part in (str(pytriton.parent / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH"))
        if part
    )
    command = [
        str(binary),
        f"--model-repository={twin}",
        f"--backend-directory={BACKEND_DIR}",
        *rest,
    ]
    print(f"tritonserver (stand-in): serving the twin of {repository} from {twin}", flush=True)
    os.execve(binary, command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
