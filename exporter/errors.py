"""The exporter's one exception type.

Every failure the user can cause or fix (a model that cannot be found, a model of the
wrong kind, a parity gate that fails, an output folder that cannot be written) is an
:class:`ExportError` whose message is one readable line; the CLI prints it and exits
non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ExportError(Exception):
    """An export that cannot go on; ``str(error)`` is the one line shown to the user."""


class ParityGateError(ExportError):
    """The INT8 model disagrees with FP32 more than the gate allows; nothing was written."""
