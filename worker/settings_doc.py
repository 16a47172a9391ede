"""Write the settings reference, ``docs/settings.md``, from :class:`WorkerSettings`.

The page is generated so it cannot drift from the code: each row is a field's name,
environment variable, command-line option, default, allowed values and docstring.
``tests/unit/test_settings_doc.py`` fails when the committed page differs from what this
module renders. Regenerate with::

    python -m worker.settings_doc > docs/settings.md

Rendering never calls a default factory: the page must be the same on every machine, and
the factories read the host name, the pid and the environment.
"""

from __future__ import annotations

import re
import sys
import typing
from collections.abc import Callable
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from emotion_stream.layout import REPOSITORY_ENV, default_repository
from worker.settings import SECRET_FIELDS, WorkerSettings, default_worker_id, env_name

REGENERATE = "python -m worker.settings_doc > docs/settings.md"

# A default computed at start-up, shown as the rule that computes it (machine-independent).
FACTORY_DEFAULTS: dict[Callable[[], Any], str] = {
    default_worker_id: "`<hostname>-<pid>`",
    default_repository: f"`${REPOSITORY_ENV}` if set, else `<checkout>/triton_models`",
}

HEADER = f"""\
# Settings

<!-- Generated from worker/settings.py by `{REGENERATE}`; do not edit by hand.
     tests/unit/test_settings_doc.py fails when this page drifts from the code. -->

`emotion-stream worker` reads every setting from an environment variable with the
`EMOTION_STREAM_` prefix, and also from a command-line option named after it
(`EMOTION_STREAM_MAX_BATCH_SIZE=16` or `--max-batch-size 16`); an option wins over its
variable. A bad value stops start-up with exit 2 and a message naming the variable.

Secrets have **no option**, because a command line shows in `ps`, `/proc/<pid>/cmdline` and
container specs: `EMOTION_STREAM_SASL_PASSWORD` is read from the environment only, or from
the file `EMOTION_STREAM_SASL_PASSWORD_FILE` (`--sasl-password-file`) names — the convention
of Docker and Kubernetes secrets; give one of the two, not both. An option such as
`--sasl-password` is refused without echoing its value.

Security settings fail closed (a setting given without the one it needs stops start-up):
see [security.md](security.md). The produce/consume tools take the Kafka settings too.

| field | env variable | option | default | description |
|---|---|---|---|---|
"""


def _inline(text: str) -> str:
    """A docstring as one Markdown table cell: ``rst`` literals as `code`, one line, no pipes."""
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    text = " ".join(text.split())
    return text.replace("|", "\\|")


def _value(value: Any) -> str:
    """A default as it would be written in the environment."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""` (empty)'
    return f"`{value}`"


def _default(name: str, field: FieldInfo) -> str:
    if field.default_factory is not None:
        factory = field.default_factory
        if factory not in FACTORY_DEFAULTS:
            raise ValueError(
                f"{name}: its default factory {factory!r} has no machine-independent "
                "rendering; add one to FACTORY_DEFAULTS in worker/settings_doc.py"
            )
        return FACTORY_DEFAULTS[factory]
    if field.default is PydanticUndefined:
        return "(required)"
    return _value(field.default)


def _choices(annotation: Any) -> list[str]:
    """The values a ``Literal`` field (optionally ``| None``) accepts."""
    if typing.get_origin(annotation) is Literal:
        return [str(choice) for choice in typing.get_args(annotation)]
    for member in typing.get_args(annotation):
        if typing.get_origin(member) is Literal:
            return [str(choice) for choice in typing.get_args(member)]
    return []


_BOUNDS: tuple[tuple[type, str, str], ...] = (
    (Ge, "ge", "≥"),
    (Gt, "gt", ">"),
    (Le, "le", "≤"),
    (Lt, "lt", "<"),
    (MinLen, "min_length", "length ≥"),
    (MaxLen, "max_length", "length ≤"),
)


def _bounds(field: FieldInfo) -> list[str]:
    found = []
    for constraint in field.metadata:
        for kind, attribute, symbol in _BOUNDS:
            if isinstance(constraint, kind):
                found.append(f"{symbol} {getattr(constraint, attribute)}")
    return found


def _option(name: str) -> str:
    if name in SECRET_FIELDS:
        return f"none (secret: environment or `{env_name(name + '_file')}` only)"
    return f"`--{name.replace('_', '-')}`"


def row(name: str, field: FieldInfo) -> str:
    """One setting as a table row."""
    if not field.description:
        raise ValueError(f"{name}: every setting needs a docstring (its description)")
    description = _inline(field.description)
    choices = _choices(field.annotation)
    if choices:
        description += " One of " + ", ".join(f"`{choice}`" for choice in choices) + "."
    bounds = _bounds(field)
    if bounds:
        description += " Range: " + ", ".join(bounds) + "."
    cells = [f"`{name}`", f"`{env_name(name)}`", _option(name), _default(name, field)]
    return "| " + " | ".join([*cells, description]) + " |"


def render() -> str:
    """The whole page, as committed in ``docs/settings.md``."""
    rows = [row(name, field) for name, field in WorkerSettings.model_fields.items()]
    return HEADER + "\n".join(rows) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
