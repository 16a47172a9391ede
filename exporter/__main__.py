"""``python -m exporter``: the same as ``emotion-stream export``."""

from __future__ import annotations

import sys

from exporter.cli import main

raise SystemExit(main(sys.argv[1:]))
