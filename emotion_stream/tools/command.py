"""What ``produce`` and ``consume`` share as commands: the options that say where Kafka is
and how to log in to it, checked, and how a failure ends the command.

The security options are the worker's Kafka security settings (:class:`KafkaSecurity`'s
fields): each takes its ``EMOTION_STREAM_*`` variable as default and its help from the
worker's settings, and they are checked by the same rules (:mod:`worker.security`). The
password has no option — a command line shows in ``ps`` — only its variable or a file.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from worker.security import (
    FILE_SUFFIX,
    KAFKA_SECURITY_FIELDS,
    KafkaSecurity,
    SecretOnCommandLineError,
    option,
    refuse_secret_options,
    secret_from,
)
from worker.settings import SECRET_FIELDS, WorkerSettings, env_name

BOOTSTRAP_ENV = env_name("kafka_bootstrap_servers")
DEFAULT_BOOTSTRAP_SERVERS = str(WorkerSettings.model_fields["kafka_bootstrap_servers"].default)
# How long to wait for the broker before saying it is unreachable: long enough for a
# broker that is still starting, short enough that a typo in the address shows quickly.
DEFAULT_CONNECT_TIMEOUT_S = 15.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2

_TRUE = frozenset({"1", "true", "yes", "on"})


class ToolError(Exception):
    """A failure the user can act on; printed as one line, exit status 1."""


class ToolSettingsError(Exception):
    """Options or variables that cannot work together; printed as given, exit status 2."""


Run = Callable[[argparse.Namespace, KafkaSecurity], int]
"""A tool's work, given its parsed options and its checked security settings."""


def run_tool(command: str, argv: Sequence[str], parser: argparse.ArgumentParser, run: Run) -> int:
    """Parse, check the security settings, then ``run``; each failure one line on stderr.

    Exit status 2 for settings that cannot work (a password given as an option among them),
    1 for a :class:`ToolError`, else what ``run`` returns.
    """
    prog = f"emotion-stream {command}"
    rest = list(argv)
    try:
        refuse_secret_options(rest, SECRET_FIELDS, env_name)
        args = parser.parse_args(rest)
        security = client_security(args)
    except (SecretOnCommandLineError, ToolSettingsError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    if security.password_in_clear:
        print(f"{prog}: warning: the SASL password crosses the network in clear", file=sys.stderr)
    try:
        return run(args, security)
    except ToolSettingsError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except ToolError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_FAILED


def unreachable(servers: str, timeout_s: float, security: KafkaSecurity) -> ToolError:
    """The one line for a broker that did not answer (or refused the login) in time."""
    refused = ""
    if security.security_protocol != "PLAINTEXT":
        refused = (
            f", or it refused the {security.security_protocol} connection: check the CA file, "
            "user name and password"
        )
    return ToolError(
        f"cannot reach Kafka at {servers} within {timeout_s:g} s "
        f"(is a broker running? 'emotion-stream local up' starts one; "
        f"--bootstrap-servers or ${BOOTSTRAP_ENV} picks another{refused})"
    )


# --------------------------------------------------------------------------- options


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value:g}")
    return value


def add_connection_options(parser: argparse.ArgumentParser, topic_field: str, topic: str) -> None:
    """``--bootstrap-servers``, ``--topic`` (the worker's ``topic_field`` setting) and
    ``--connect-timeout``, then the security options."""
    topic_env = env_name(topic_field)
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get(BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP_SERVERS),
        help=f"Kafka address (default: ${BOOTSTRAP_ENV} or {DEFAULT_BOOTSTRAP_SERVERS})",
    )
    parser.add_argument(
        "--topic",
        default=os.environ.get(topic_env, topic),
        help=f"topic (default: ${topic_env} or {topic})",
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metavar="S",
        help="give up when the broker does not answer within S seconds "
        f"(default {DEFAULT_CONNECT_TIMEOUT_S:g})",
    )
    _add_security_options(parser)


_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(KafkaSecurity)


def _choices(field: str) -> tuple[str, ...]:
    """The values a ``Literal`` field (or an optional one) allows; empty for any other."""

    def literal_values(hint: Any) -> tuple[str, ...]:
        if typing.get_origin(hint) is Literal:
            return typing.get_args(hint)
        return tuple(value for arg in typing.get_args(hint) for value in literal_values(arg))

    return literal_values(_FIELD_TYPES.get(field))


def _is_path(field: str) -> bool:
    hint = _FIELD_TYPES.get(field, Path)  # a secret's file twin is a path
    return hint is Path or Path in typing.get_args(hint)


def _option_fields() -> list[str]:
    """The security options: each Kafka security field, a secret by its file only."""
    return [name + FILE_SUFFIX if name in SECRET_FIELDS else name for name in KAFKA_SECURITY_FIELDS]


def _help(field: str) -> str:
    description = (WorkerSettings.model_fields[field].description or "").split("\n")[0]
    description = description.replace("``", "").replace("%", "%%")  # argparse formats help
    if choices := _choices(field):
        description = f"{description.rstrip('.')}: {', '.join(choices)}"
    return f"{description} [${env_name(field)}]"


def _add_security_options(parser: argparse.ArgumentParser) -> None:
    """The worker's Kafka security settings, each defaulting to the worker's variable."""
    password, password_file = "sasl_password", "sasl_password" + FILE_SUFFIX
    group = parser.add_argument_group(
        "security",
        "as the worker's settings; each defaults to its EMOTION_STREAM_* variable. The "
        f"password has no option (a command line shows in ps): ${env_name(password)} "
        f"or a file holding it, {option(password_file)} / ${env_name(password_file)}",
    )
    for field in _option_fields():
        variable = os.environ.get(env_name(field), "")
        if _FIELD_TYPES.get(field) is bool:
            group.add_argument(
                option(field),
                dest=field,
                action="store_true",
                default=variable.lower() in _TRUE,
                help=_help(field),
            )
            continue
        group.add_argument(
            option(field),
            dest=field,
            default=variable or None,
            metavar="FILE" if _is_path(field) else None,
            help=_help(field),
        )


def setting_name(field: str) -> str:
    """How the tools name a setting: its option (if any) and its variable."""
    if field in SECRET_FIELDS:
        return f"${env_name(field)}"
    return f"{option(field)} (${env_name(field)})"


def _given(field: str, args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    """One security setting as given (``None`` when not), as :class:`KafkaSecurity` types it.

    Raises
    ------
    ValueError
        Not one of the field's choices, or the secret's file cannot give it.
    """
    if field in SECRET_FIELDS:
        secret = secret_from(
            environ.get(env_name(field)) or None,
            getattr(args, field + FILE_SUFFIX),
            name=setting_name,
            field=field,
        )
        return SecretStr(secret) if isinstance(secret, str) else secret
    value = getattr(args, field)
    if choices := _choices(field):
        choice = value.upper() if value else None
        if choice is not None and choice not in choices:
            raise ValueError(f"{setting_name(field)}: not one of {', '.join(choices)}")
        return choice
    if _is_path(field):
        return Path(value) if value else None
    return value


def client_security(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> KafkaSecurity:
    """The Kafka security settings from the options and the environment, checked.

    Raises
    ------
    ToolSettingsError
        A value is not one of the choices, a setting lacks the one it needs, or the
        password file cannot give the password; one line each, naming them.
    """
    given: dict[str, Any] = {}
    problems = []
    for field in KAFKA_SECURITY_FIELDS:
        try:
            given[field] = _given(field, args, environ)
        except ValueError as error:  # a choice not offered, a password file unreadable
            problems.append(str(error))
    if problems:
        raise ToolSettingsError("\n".join(problems))
    security = KafkaSecurity(
        **{field: value for field, value in given.items() if value is not None}
    )
    problems = security.problems(setting_name)
    if problems:
        raise ToolSettingsError("\n".join(problems))
    return security
