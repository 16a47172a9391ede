"""Stage 6b: put the model folder into the Triton repository atomically.

Triton (and the worker) must never see half a model. The folder is built in full in a
hidden staging folder beside the target (``<repository>/.<name>.tmp-*``, same file
system), then renamed into place; an earlier version is first renamed aside and removed
only after the new one is in place. A failure at any point before the rename removes the
staging folder and leaves the earlier repository as it was.

A fingerprint of the input files and every option that shapes the output is stored in
``export-report.json``; the same fingerprint next time means there is nothing to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emotion_stream.layout import ModelLayout
from exporter.errors import ExportError

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (weights can be 500 MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(model_dir: Path, options: dict[str, Any]) -> str:
    """SHA-256 over the model folder's files (top level) and the options that shape the output."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for path in sorted(model_dir.iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def read_report(layout: ModelLayout) -> dict[str, Any] | None:
    """The existing export report, or None when there is none or it is unreadable."""
    try:
        report = json.loads(layout.report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def is_up_to_date(layout: ModelLayout, expected: str) -> bool:
    """True when the repository holds a complete export with this fingerprint."""
    report = read_report(layout)
    return (
        report is not None
        and report.get("fingerprint") == expected
        and layout.onnx.is_file()
        and layout.config.is_file()
        and layout.labels.is_file()
        and layout.tokenizer_dir.is_dir()
    )


@contextmanager
def writable_repository(repository: Path) -> Iterator[None]:
    """Make sure ``repository`` exists and is writable; undo folders made here on failure.

    Checked before any heavy work, so an unwritable output fails in a second.

    Raises
    ------
    ExportError
        The folder cannot be created or written.
    """
    missing = [p for p in [repository, *repository.parents] if not p.exists()]
    try:
        repository.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=repository):
            pass
    except OSError as error:
        _remove_empty(missing)
        raise ExportError(
            f"cannot write the model repository {repository}: {error.strerror or error}"
        ) from error
    try:
        yield
    except BaseException:
        _remove_empty(missing)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this run created (deepest first) if they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def recover(layout: ModelLayout) -> None:
    """Clean up after an export that was killed (SIGKILL, power loss) part way.

    A killed build leaves ``.<name>.tmp-*``; a kill between the two renames of
    :func:`_swap_into_place` leaves no model folder but ``.<name>.old-*``, which is put
    back. Exports to one repository are not expected to run concurrently.
    """
    repository = layout.repository
    aside = sorted(repository.glob(f".{layout.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside and not layout.model_dir.exists():
        log.warning("recover: restoring %s from %s", layout.model_dir, aside[-1].name)
        os.rename(aside.pop(), layout.model_dir)
    for stale in [*aside, *repository.glob(f".{layout.name}.tmp-*")]:
        log.info("recover: removing %s left by an interrupted export", stale.name)
        shutil.rmtree(stale, ignore_errors=True)


def publish(layout: ModelLayout, build: Callable[[ModelLayout], None]) -> None:
    """Build the model folder with ``build`` in a staging folder, then move it into place.

    ``build`` receives a layout whose ``model_dir`` is the staging folder.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{layout.name}.tmp-", dir=layout.repository))
    try:
        build(ModelLayout(repository=staging.parent, name=staging.name, version=layout.version))
        _swap_into_place(staging, layout.model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("write: %s", layout.model_dir)


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing target is kept until that succeeded."""
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, previous)
    try:
        os.rename(staging, target)
    except BaseException:
        if previous is not None:
            os.rename(previous, target)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
