"""Which security settings belong together, and secrets read from files.

Shared by the worker's settings and by ``emotion-stream produce``/``consume``, so both
refuse the same mistakes with the same words. The rule is *fail closed*: a setting
that can only matter together with another one, given without it, is an error rather
than silently ignored — an operator who sets a CA file believes the traffic is
encrypted, and must not find out later that the protocol was ``PLAINTEXT``.

No Kafka or gRPC import here: the settings are checked before any client exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# Protocols whose connections are encrypted by TLS / authenticated by SASL.
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
# SASL/PLAIN sends the password itself; over SASL_PLAINTEXT anyone on the path reads it.
CLEARTEXT_PASSWORD = ("SASL_PLAINTEXT", "PLAIN")

# The suffix of the setting that names a file holding a secret (the convention of
# Docker and Kubernetes secrets mounted as files).
FILE_SUFFIX = "_file"

Namer = Callable[[str], str]
"""Turns a field name (``ssl_cafile``) into the name the user knows (an env variable,
or an option and its variable)."""


class SecretFileError(ValueError):
    """A ``*_FILE`` setting that cannot give its secret; the message names the setting."""


def read_secret_file(path: Path, setting: str) -> str:
    """The secret in ``path``, without its trailing newline (``echo pw > file`` adds one).

    Raises
    ------
    SecretFileError
        The file is missing, unreadable, not UTF-8 or empty; the message names
        ``setting`` and the path, never the content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SecretFileError(f"{setting}: cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{setting}: {path} is not UTF-8 text") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise SecretFileError(f"{setting}: {path} is empty")
    return secret


def secret_from(value: object, file: object, *, name: Namer, field: str) -> str | SecretStr | None:
    """The secret given either inline (``value``) or as a file (``file``), not both.

    Raises
    ------
    SecretFileError
        Both are given, or the file cannot give the secret.
    """
    file_field = field + FILE_SUFFIX
    if file is None or file == "":
        return value if isinstance(value, str | SecretStr) else None
    if value is not None:
        raise SecretFileError(
            f"{name(field)} and {name(file_field)} are both set: give the secret one way"
        )
    return read_secret_file(Path(str(file)), name(file_field))


class SecretOnCommandLineError(ValueError):
    """A secret given as an option; the message names its variables, never the value."""


def option(field: str) -> str:
    """The command-line option of a setting: ``ssl_cafile`` -> ``--ssl-cafile``."""
    return "--" + field.replace("_", "-")


def refuse_secret_options(argv: Iterable[str], secret_fields: Iterable[str], env: Namer) -> None:
    """Stop before parsing when a secret was given as an option (there is none).

    A command line shows in ``ps``, ``/proc/<pid>/cmdline`` and container specs; and
    argparse would echo the value in its "unrecognized arguments" error.

    Raises
    ------
    SecretOnCommandLineError
        An argument is ``--<secret>`` or ``--<secret>=...``.
    """
    args = list(argv)
    for field in sorted(secret_fields):
        flag = option(field)
        if any(arg == flag or arg.startswith(flag + "=") for arg in args):
            raise SecretOnCommandLineError(
                f"{flag} is not accepted: a command line shows in ps and /proc; set "
                f"{env(field)} or {env(field + FILE_SUFFIX)} (a file holding it)"
            )


@dataclass(frozen=True)
class KafkaSecurity:
    """The Kafka client's security settings, as the worker and the tools take them.

    Each field is also a :class:`~worker.settings.WorkerSettings` field of the same name,
    type and default (documented there); :data:`KAFKA_SECURITY_FIELDS` lists them for
    the settings and the tools, so neither repeats the list.
    """

    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    allow_cleartext_password: bool = False

    @property
    def password_in_clear(self) -> bool:
        """The password crosses the network readable by anyone on the path."""
        return (self.security_protocol, self.sasl_mechanism) == CLEARTEXT_PASSWORD

    def problems(self, name: Namer) -> list[str]:
        """Each setting given without the one it needs, named both ways round."""
        return list(self._problems(name))

    def _problems(self, name: Namer) -> Iterator[str]:
        protocol = f"{name('security_protocol')}={self.security_protocol}"
        if self.security_protocol not in TLS_PROTOCOLS:
            for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, field) is not None:
                    yield (
                        f"{name(field)} is set but {protocol} does not use TLS: "
                        f"use SSL or SASL_SSL, or unset {name(field)}"
                    )
        elif self.ssl_keyfile is not None and self.ssl_certfile is None:
            yield f"{name('ssl_keyfile')} is set without {name('ssl_certfile')}, its certificate"
        if self.security_protocol in SASL_PROTOCOLS:
            if self.sasl_mechanism is None:
                yield f"{name('sasl_mechanism')} is required with {protocol}"
            if not self.sasl_username or self.sasl_password is None:
                needed = f"{name('sasl_username')} and {name('sasl_password')}"
                yield f"{needed} are required with {protocol}"
        else:
            for field in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, field) is not None:
                    yield (
                        f"{name(field)} is set but {protocol} does not use SASL: "
                        f"use SASL_PLAINTEXT or SASL_SSL, or unset {name(field)}"
                    )
        if self.password_in_clear and not self.allow_cleartext_password:
            yield (
                f"{protocol} with {name('sasl_mechanism')}=PLAIN sends the password in clear: "
                f"use SASL_SSL, or set {name('allow_cleartext_password')}=true to accept it"
            )
        if self.allow_cleartext_password and not self.password_in_clear:
            yield (
                f"{name('allow_cleartext_password')} only applies to SASL_PLAINTEXT with "
                f"{name('sasl_mechanism')}=PLAIN, not {protocol} with "
                f"{name('sasl_mechanism')}={self.sasl_mechanism}: unset it"
            )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python clients — secrets included. Never log them."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in SASL_PROTOCOLS:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.security_protocol in TLS_PROTOCOLS:
            for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                path = getattr(self, field)
                if path is not None:
                    options[field] = str(path)
        return options


KAFKA_SECURITY_FIELDS: tuple[str, ...] = tuple(field.name for field in fields(KafkaSecurity))
"""The names of the Kafka security settings, in the order the settings page lists them."""


def triton_tls_problems(
    *,
    ssl: bool,
    root_certificates: Path | None,
    private_key: Path | None,
    certificate_chain: Path | None,
    name: Namer,
) -> list[str]:
    """Triton's certificate settings given without TLS, or half a client identity."""
    problems = []
    if not ssl:
        for field, value in (
            ("triton_root_certificates", root_certificates),
            ("triton_private_key", private_key),
            ("triton_certificate_chain", certificate_chain),
        ):
            if value is not None:
                problems.append(
                    f"{name(field)} is set but {name('triton_ssl')} is false, so the channel "
                    f"to Triton is not encrypted: set {name('triton_ssl')}=true or unset "
                    f"{name(field)}"
                )
    if (private_key is None) != (certificate_chain is None):
        problems.append(
            f"{name('triton_private_key')} and {name('triton_certificate_chain')} go together "
            "(mutual TLS needs the key and its certificate): set both or neither"
        )
    return problems
