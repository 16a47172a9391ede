"""``emotion-stream``: one command, a sub-command per part of the system.

Each part keeps its own argument parser in its own package; this module only
dispatches, importing the chosen part lazily so that ``emotion-stream worker``
never imports torch and ``emotion-stream export`` never imports Kafka.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> (module with ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("exporter.cli", "HF model -> ONNX -> fused INT8 -> Triton model repository"),
    "local": ("compose.local", "start/stop/inspect the Docker-free Kafka + Triton stack"),
    "worker": ("worker.cli", "run the streaming worker"),
    "produce": (
        "emotion_stream.tools.produce",
        "send tweets (JSON lines or plain lines) to the input topic",
    ),
    "consume": ("emotion_stream.tools.consume", "print classified tweets from the output topic"),
}


def usage() -> str:
    lines = ["usage: emotion-stream <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n'emotion-stream <command> --help' for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"emotion-stream: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest))


if __name__ == "__main__":
    raise SystemExit(main())
