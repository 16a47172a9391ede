"""Test certificates: a CA and a loopback server certificate that TLS clients accept."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from compose import certificates
from compose.certificates import make_ca, make_server_certificate


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    """One TLS handshake over loopback; raises what the client's verification raises."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            connection, _ = listener.accept()
            try:
                with server_context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused us: its side carries the assertion

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                pass
        finally:
            thread.join(timeout=10)


def test_server_certificate_verifies_for_loopback_against_its_ca(tmp_path: Path) -> None:
    made = make_server_certificate(tmp_path)
    assert "PRIVATE KEY" in made.keystore.read_text() and "CERTIFICATE" in made.keystore.read_text()
    assert made.key.stat().st_mode & 0o077 == 0  # keys readable by their owner only

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(made.cert, made.key)
    client = ssl.create_default_context(cafile=str(made.ca_cert))
    _handshake(server, client)  # hostname 127.0.0.1 checked against the certificate

    other_ca, _ = make_ca(tmp_path / "other")
    stranger = ssl.create_default_context(cafile=str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, stranger)


def test_private_keys_are_owner_only_from_the_moment_they_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the most open umask and with chmod forbidden, every private key file is 0600,
    and already is when openssl is asked to write a key into it."""

    def no_chmod(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"chmod after creation: {args}")

    monkeypatch.setattr(os, "chmod", no_chmod)
    modes_when_openssl_writes: dict[str, int] = {}
    run_openssl = certificates._openssl

    def watching(*args: str, cwd: Path) -> None:
        if "-keyout" in args:
            key = Path(args[args.index("-keyout") + 1])
            modes_when_openssl_writes[key.name] = stat.S_IMODE(key.stat().st_mode)
        run_openssl(*args, cwd=cwd)

    monkeypatch.setattr(certificates, "_openssl", watching)
    previous = os.umask(0)
    try:
        made = make_server_certificate(tmp_path)
    finally:
        os.umask(previous)

    assert modes_when_openssl_writes == {"server-ca.key": 0o600, "server.key": 0o600}
    for key in (made.key, made.keystore, tmp_path / "server-ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert "PRIVATE KEY" in key.read_text()
    # Certificates are public: the umask, not this code, decides their mode.
    assert stat.S_IMODE(made.cert.stat().st_mode) & 0o044
