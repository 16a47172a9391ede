"""Kafka's jars: fetched once from Maven Central into a git-ignored cache, then checked.

``compose/kafka/pom.xml`` names Kafka's broker, its runtime dependencies and a log4j2
binding; Maven copies them into one folder that becomes the JVM's classpath
(:mod:`compose.embedded.kafka_broker`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from compose.processes import EmbeddedStackError
from emotion_stream.layout import project_root

KAFKA_DIR = Path(__file__).resolve().parent.parent / "kafka"
KAFKA_POM = KAFKA_DIR / "pom.xml"
KAFKA_LOG4J2_CONFIG = KAFKA_DIR / "log4j2.properties"
# The broker's own jar, present only after a complete fetch.
KAFKA_BROKER_JAR_GLOB = "kafka_2.13-*.jar"
# Written after a complete copy, holding the pom's content: an interrupted fetch or a
# changed pom fetches again.
FETCH_STAMP = ".fetched-from-pom"
FETCH_TIMEOUT_S = 600.0


def default_kafka_libs_dir() -> Path:
    """``$EMOTION_STREAM_KAFKA_LIBS`` or ``<checkout>/.cache/kafka/libs`` (git-ignored)."""
    env = os.environ.get("EMOTION_STREAM_KAFKA_LIBS")
    return Path(env) if env else project_root() / ".cache" / "kafka" / "libs"


def has_kafka_jars(libs_dir: Path) -> bool:
    """Whether ``libs_dir`` holds Kafka's broker jar."""
    return any(libs_dir.glob(KAFKA_BROKER_JAR_GLOB))


def fetch_kafka_jars(libs_dir: Path | None = None, *, mvn: str = "mvn") -> Path:
    """Copy Kafka's broker jars, runtime dependencies and log4j2 binding into ``libs_dir``.

    Idempotent and quick once done: a stamp holding the pom's content marks a complete copy.

    Raises
    ------
    EmbeddedStackError
        Maven is missing or failed (its output is attached).
    """
    libs_dir = (libs_dir or default_kafka_libs_dir()).resolve()
    pom_text = KAFKA_POM.read_text(encoding="utf-8")
    stamp = libs_dir / FETCH_STAMP
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == pom_text:
        return libs_dir
    if shutil.which(mvn) is None:
        raise EmbeddedStackError(f"kafka: `{mvn}` not found on PATH; install Maven 3.8+")
    if libs_dir.exists():
        shutil.rmtree(libs_dir)  # a changed pom must not leave old jars on the classpath
    libs_dir.mkdir(parents=True)
    argv = [
        mvn, "-q", "-B", "-f", str(KAFKA_POM),
        "dependency:copy-dependencies", f"-Dkafka.libs.dir={libs_dir}",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise EmbeddedStackError(f"kafka: `mvn` took over {FETCH_TIMEOUT_S:.0f} s") from error
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise EmbeddedStackError(f"kafka: fetching jars with Maven failed:\n{output}")
    stamp.write_text(pom_text, encoding="utf-8")
    return libs_dir
