#!/bin/bash
# Stand-in for apache/kafka's kafka-broker-api-versions.sh.
exec /opt/kafka/bin/kafka-run-class.sh org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
