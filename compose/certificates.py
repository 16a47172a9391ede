"""Throw-away TLS material for the embedded services: a CA and a loopback server certificate.

Made with the ``openssl`` command line (present wherever Kafka's tooling is; no Python
dependency): a self-signed CA and a server certificate it signs for ``localhost`` and
``127.0.0.1``, valid for a few days. Keys are unencrypted PEM (PKCS#8), readable only by
their owner: the files live in a test's temporary folder or the stack's state folder.
"""

from __future__ import annotations

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
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", KEY_ALGORITHM, "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", str(VALIDITY_DAYS),
        "-subj", f"/CN=emotion-stream test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def make_server_certificate(folder: Path, name: str = "server") -> ServerCertificate:
    """A new CA and a server certificate for ``localhost``/``127.0.0.1`` in ``folder``."""
    ca_cert, ca_key = make_ca(folder, f"{name}-ca")
    key, request, cert = (folder / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
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
    key.chmod(0o600)
    keystore = folder / f"{name}-keystore.pem"
    keystore.write_text(
        key.read_text(encoding="ascii") + cert.read_text(encoding="ascii"), encoding="ascii"
    )
    keystore.chmod(0o600)
    return ServerCertificate(ca_cert=ca_cert, cert=cert, key=key, keystore=keystore)
