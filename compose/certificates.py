"""Throw-away TLS material for the embedded services: a CA and a loopback server certificate.

Made with the ``openssl`` command line (present wherever Kafka's tooling is; no Python
dependency): a self-signed CA and a server certificate it signs for ``localhost`` and
``127.0.0.1``, valid for a few days. Keys are unencrypted PEM (PKCS#8), readable only by
their owner from the moment they exist (:func:`_private_file`, never a ``chmod`` after the
key is in): the files live in a test's temporary folder or the stack's state folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from compose.processes import EmbeddedStackError

# Long enough for any test session or demo, short enough that a leaked file soon expires.
VALIDITY_DAYS = 7
KEY_ALGORITHM = "rsa:2048"  # what every TLS stack here (Java, Python ssl, gRPC) accepts
OPENSSL_TIMEOUT_S = 60.0
SERVER_NAMES = "DNS:localhost,IP:127.0.0.1"


@dataclass(frozen=True)
class ServerCertificate:
    """A CA and a server certificate it signed, as PEM files.

    ``keystore`` holds the server's private key followed by its certificate: the single
    file Kafka's ``ssl.keystore.type=PEM`` reads.
    """

    ca_cert: Path
    cert: Path
    key: Path
    keystore: Path


# Owner read/write only: the mode a private key file is created with.
PRIVATE_MODE = 0o600


def _private_file(path: Path, content: str = "") -> Path:
    """Create ``path`` (replacing any old file) with mode 0600, then write ``content``.

    The mode is set by the ``open`` that creates the file, so no moment exists in which
    the key is readable by others; ``openssl`` writing a key into this file truncates it
    and keeps its mode.
    """
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(content)
    return path


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise EmbeddedStackError("certificates: `openssl` not found on PATH")
    result = subprocess.run(
        ["openssl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise EmbeddedStackError(
            f"certificates: `openssl {args[0]}` failed: {result.stderr.strip()[-2000:]}"
        )


def make_ca(folder: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA in ``folder``: ``(<name>.pem, <name>.key)``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", _private_file(folder / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", KEY_ALGORITHM, "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", str(VALIDITY_DAYS),
        "-subj", f"/CN=emotion-stream test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    return cert, key


def make_server_certificate(folder: Path, name: str = "server") -> ServerCertificate:
    """A new CA and a server certificate for ``localhost``/``127.0.0.1`` in ``folder``."""
    ca_cert, ca_key = make_ca(folder, f"{name}-ca")
    request, cert = (folder / f"{name}.{ext}" for ext in ("csr", "pem"))
    key = _private_file(folder / f"{name}.key")
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName={SERVER_NAMES}\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n",
        encoding="utf-8",
    )
    _openssl(
        "req", "-newkey", KEY_ALGORITHM, "-nodes", "-keyout", str(key),
        "-out", str(request), "-subj", "/CN=localhost",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", str(VALIDITY_DAYS),
        "-extfile", str(extensions),
        cwd=folder,
    )  # fmt: skip
    keystore = _private_file(
        folder / f"{name}-keystore.pem",
        key.read_text(encoding="ascii") + cert.read_text(encoding="ascii"),
    )
    return ServerCertificate(ca_cert=ca_cert, cert=cert, key=key, keystore=keystore)
