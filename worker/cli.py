"""``emotion-stream worker``: build the settings, run the Worker until SIGTERM/SIGINT.

Every setting is an ``EMOTION_STREAM_*`` environment variable and also an option
(``--max-batch-size 16``); options win. Secrets are the exception: a command line shows
in ``ps``, ``/proc/<pid>/cmdline`` and container specs, so they have no option — only
their variable and its ``*_FILE`` twin (``EMOTION_STREAM_SASL_PASSWORD_FILE``).
Exit codes: 0 after a clean stop, 2 when a setting is invalid (one message naming
each bad setting), 1 when the worker cannot work as configured (e.g. the model does
not match, a topic refuses writes).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from pydantic import ValidationError

from worker.errors import FatalError
from worker.observability import configure_logging
from worker.security import SecretOnCommandLineError, refuse_secret_options
from worker.settings import SECRET_FIELDS, WorkerSettings, describe_validation_error, env_name

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_BAD_SETTINGS = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-stream worker",
        description="Consume tweets, classify them through Triton, publish results. "
        "Each option can also be set by its environment variable; secrets only by theirs.",
        # Without this, "--sasl-password VALUE" would pass as an abbreviation of
        # --sasl-password-file and the password would be taken for a path.
        allow_abbrev=False,
    )
    for name, field in WorkerSettings.model_fields.items():
        if name in SECRET_FIELDS:
            continue
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="VALUE",
            default=None,
            help=f"{(field.description or '').split(chr(10))[0]} [{env_name(name)}]",
        )
    return parser


def build_settings(argv: list[str]) -> WorkerSettings:
    """Settings from the environment, overridden by options.

    Raises
    ------
    SecretOnCommandLineError
        A secret was given as an option (they have none).
    ValidationError
        A value is invalid; :func:`describe_validation_error` names each one.
    """
    refuse_secret_options(argv, SECRET_FIELDS, env_name)
    args = _parser().parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    return WorkerSettings(**overrides)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = build_settings(args)
    except SecretOnCommandLineError as exc:
        print(f"emotion-stream worker: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except ValidationError as exc:
        print(
            "emotion-stream worker: invalid settings\n" + describe_validation_error(exc),
            file=sys.stderr,
        )
        return EXIT_BAD_SETTINGS
    configure_logging(settings.log_level, worker_id=settings.worker_id)

    # Heavy imports (transformers, grpc, kafka) only once the settings are known good.
    from worker.app import Worker  # noqa: PLC0415

    worker = Worker(settings)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        worker.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
    try:
        worker.run()
    except FatalError as exc:
        print(f"emotion-stream worker: {exc}", file=sys.stderr)
        return EXIT_FATAL
    return EXIT_OK
