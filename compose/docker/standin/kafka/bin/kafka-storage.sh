#!/bin/bash
# Stand-in for apache/kafka's kafka-storage.sh.
exec /opt/kafka/bin/kafka-run-class.sh kafka.tools.StorageTool "$@"
