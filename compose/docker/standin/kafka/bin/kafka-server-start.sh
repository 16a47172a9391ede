#!/bin/bash
# Stand-in for apache/kafka's kafka-server-start.sh.
exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "$@"
