#!/bin/bash
# Stand-in for apache/kafka's script of the same name: java on the image's jars.
set -euo pipefail
# KAFKA_HEAP_OPTS holds several options: split on purpose, like the official script.
# shellcheck disable=SC2086
exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseG1GC -Djava.awt.headless=true \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  -cp "/opt/kafka/libs/*" "$@"
