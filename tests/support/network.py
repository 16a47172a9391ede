"""Loopback ports for services a test or benchmark starts, and an HTTP status probe."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

HTTP_TIMEOUT_S = 2.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports nothing listens on now (the kernel's picks on 127.0.0.1).

    Every probe socket stays bound until all are picked, so the kernel cannot hand out the
    same port twice; they are closed before returning, for the service to bind.
    """
    probes: list[socket.socket] = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probes.append(probe)
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def free_port() -> int:
    """One TCP port nothing listens on now."""
    return free_ports(1)[0]


def http_status(port: int, path: str) -> int | None:
    """Status of ``GET http://127.0.0.1:<port><path>``; None if nothing answers."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}{path}", timeout=HTTP_TIMEOUT_S
        ) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None
