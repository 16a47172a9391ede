"""What ``emotion-stream consume`` prints for one record: a readable line with its
terminal-driving characters escaped (:func:`escape_controls`), or the raw value."""

from __future__ import annotations

import json
from collections.abc import Sequence

from worker.messages import DLQ_ERROR_CLASS, DLQ_ERROR_MESSAGE

# Readable output: the tweet text is cut to keep one result on one terminal line.
TEXT_WIDTH = 72

# Characters that drive a terminal rather than show: C0 and C1 controls (ESC starts the
# sequences that retitle a terminal or write its clipboard), the bidi controls that
# reorder what is shown (Trojan Source, CVE-2021-42574) and the line/paragraph separators.
_BIDI_CONTROLS = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_TERMINAL_CONTROLS = (*range(0x20), *range(0x7F, 0xA0), *_BIDI_CONTROLS, 0x2028, 0x2029)
_ESCAPES = {
    code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _TERMINAL_CONTROLS
}


def escape_controls(text: str) -> str:
    """``text`` with every terminal-driving character written as a visible escape
    (``\\x1b``, ``\\u202e``): tweets and dead-letter headers are untrusted — anyone who can
    write to the topics chooses them — and must never reach an operator's terminal raw."""
    return text.translate(_ESCAPES)


def render_record(
    value: bytes, headers: Sequence[tuple[str, bytes]] = (), *, as_json: bool = False
) -> str:
    """What ``consume`` prints for one record: the readable line (escaped), or with
    ``as_json`` the value exactly as sent (invalid UTF-8 replaced), for programs to read."""
    if as_json:
        return value.decode("utf-8", errors="replace")
    return format_result(value, headers)


def format_result(
    value: bytes, headers: Sequence[tuple[str, bytes]] = (), width: int = TEXT_WIDTH
) -> str:
    """One readable line for one output record: label, score, id and the text, cut short.

    A dead letter (read with ``--topic tweets.dlq``) shows its error class and message
    from the worker's ``dlq.*`` headers; anything else that is not a result is shown as
    its raw value rather than dropped. Control characters are escapes
    (:func:`escape_controls`).
    """
    return escape_controls(_readable(value, headers, width))


def _readable(value: bytes, headers: Sequence[tuple[str, bytes]], width: int) -> str:
    context = {name: raw.decode("utf-8", errors="replace") for name, raw in headers}
    if DLQ_ERROR_CLASS in context:
        raw_value = value.decode("utf-8", errors="replace")
        return (
            f"DEAD-LETTER {context[DLQ_ERROR_CLASS]}: {context.get(DLQ_ERROR_MESSAGE, '')}"
            f"  <- {raw_value[:width]!r}"
        )
    try:
        result: object = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        result = None
    if not isinstance(result, dict) or "label" not in result:
        return f"(not a result) {value.decode('utf-8', errors='replace')}"
    text = " ".join(str(result.get("text", "")).split())
    if len(text) > width:
        text = text[: width - 1] + "…"
    score = result.get("score")
    score_text = f"{score:.2f}" if isinstance(score, int | float) else "  ? "
    line = f"{result['label']!s:<9} {score_text}  {result.get('id', '')!s:<12} {text}"
    meta = result.get("meta")
    if isinstance(meta, dict) and "expected" in meta:
        line += f"  (expected {meta['expected']})"
    return line
