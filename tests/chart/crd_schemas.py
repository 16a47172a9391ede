"""JSON schemas for the custom resources the chart renders, from their projects' docs.

``kubernetes-validate`` knows only Kubernetes' own kinds. These schemas encode the fields
each project documents for the resources we render — with ``additionalProperties: false``
wherever the documentation lists every field, so a misspelt or invented field fails here
instead of being silently dropped by a cluster's CRD pruning:

- KEDA ``ScaledObject`` / ``TriggerAuthentication`` (``keda.sh/v1alpha1``): keda.sh docs
  2.18+, "ScaledObject specification", "Apache Kafka" scaler, "Authentication".
- Prometheus Operator ``ServiceMonitor`` / ``PrometheusRule`` (``monitoring.coreos.com/v1``):
  the operator's API reference (ServiceMonitorSpec, Endpoint, NamespaceSelector,
  PrometheusRuleSpec, RuleGroup, Rule); durations follow its ``Duration`` pattern.
- Strimzi ``KafkaTopic`` (``kafka.strimzi.io/v1`` and ``v1beta2``): the Strimzi API
  reference, KafkaTopicSpec (partitions >= 1, replicas 1..32767, config, topicName).

Only the fields the chart can render are listed for the big specs (ServiceMonitor's
Endpoint has dozens more); adding one to a template means adding it here, from the docs.
"""

from __future__ import annotations

from typing import Any

# Prometheus Operator's monitoringv1.Duration.
DURATION = {
    "type": "string",
    "pattern": (
        r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
        r"(([0-9]+)ms)?)$"
    ),
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# KEDA trigger metadata values are strings (the docs quote numbers and booleans).
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "additionalProperties": False,
}


def _resource(api_versions: list[str], kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"enum": api_versions},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


_HPA_POLICY = {
    "type": "object",
    "required": ["type", "value", "periodSeconds"],
    "properties": {
        "type": {"enum": ["Pods", "Percent"]},
        "value": {"type": "integer", "minimum": 1},
        "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
    },
    "additionalProperties": False,
}
_HPA_RULES = {
    "type": "object",
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "items": _HPA_POLICY},
    },
    "additionalProperties": False,
}

# keda.sh: "Apache Kafka" scaler, parameter list (metadata) — every documented key.
KAFKA_TRIGGER_METADATA = {
    "type": "object",
    "required": ["bootstrapServers", "consumerGroup"],
    "properties": {
        "bootstrapServers": {"type": "string", "minLength": 1},
        "consumerGroup": {"type": "string", "minLength": 1},
        "topic": {"type": "string", "minLength": 1},
        "lagThreshold": {"type": "string", "pattern": r"^[0-9]+$"},
        "activationLagThreshold": {"type": "string", "pattern": r"^[0-9]+$"},
        "offsetResetPolicy": {"enum": ["latest", "earliest"]},
        "allowIdleConsumers": {"enum": ["true", "false"]},
        "scaleToZeroOnInvalidOffset": {"enum": ["true", "false"]},
        "excludePersistentLag": {"enum": ["true", "false"]},
        "limitToPartitionsWithLag": {"enum": ["true", "false"]},
        "ensureEvenDistributionOfPartitions": {"enum": ["true", "false"]},
        "version": {"type": "string"},
        "partitionLimitation": {"type": "string"},
        "sasl": {
            "enum": ["plaintext", "scram_sha256", "scram_sha512", "gssapi", "oauthbearer", "none"]
        },
        "saslTokenProvider": {"enum": ["bearer", "aws_msk_iam"]},
        "tls": {"enum": ["enable", "disable"]},
        "unsafeSsl": {"enum": ["true", "false"]},
        "awsRegion": {"type": "string"},
    },
    "additionalProperties": False,
}

SCALED_OBJECT = _resource(
    ["keda.sh/v1alpha1"],
    "ScaledObject",
    {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string", "minLength": 1},
                    "envSourceContainerName": {"type": "string"},
                },
                "additionalProperties": False,
            },
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": {
                "type": "object",
                "required": ["failureThreshold", "replicas"],
                "properties": {
                    "failureThreshold": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1},
                    "behavior": {
                        "enum": [
                            "static",
                            "currentReplicas",
                            "currentReplicasIfHigher",
                            "currentReplicasIfLower",
                        ]
                    },
                },
                "additionalProperties": False,
            },
            "advanced": {
                "type": "object",
                "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "behavior": {
                                "type": "object",
                                "properties": {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES},
                                "additionalProperties": False,
                            },
                        },
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "properties": {
                        "type": {"const": "kafka"},
                        "name": {"type": "string"},
                        "metadata": KAFKA_TRIGGER_METADATA,
                        "useCachedMetrics": {"type": "boolean"},
                        "metricType": {"enum": ["AverageValue", "Value"]},
                        "authenticationRef": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string"},
                                "kind": {
                                    "enum": [
                                        "TriggerAuthentication",
                                        "ClusterTriggerAuthentication",
                                    ]
                                },
                            },
                            "additionalProperties": False,
                        },
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

# keda.sh: "Authentication": secretTargetRef / env; the Kafka scaler's auth parameters.
_KAFKA_AUTH_PARAMETER = {
    "enum": [
        "sasl",
        "username",
        "password",
        "tls",
        "ca",
        "cert",
        "key",
        "keyPassword",
        "keytab",
        "realm",
        "kerberosConfig",
        "kerberosServiceName",
        "oauthTokenEndpointUri",
        "scopes",
        "oauthExtensions",
    ]
}
TRIGGER_AUTHENTICATION = _resource(
    ["keda.sh/v1alpha1"],
    "TriggerAuthentication",
    {
        "type": "object",
        "properties": {
            "secretTargetRef": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["parameter", "name", "key"],
                    "properties": {
                        "parameter": _KAFKA_AUTH_PARAMETER,
                        "name": {"type": "string", "minLength": 1},
                        "key": {"type": "string", "minLength": 1},
                    },
                    "additionalProperties": False,
                },
            },
            "env": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["parameter", "name"],
                    "properties": {
                        "parameter": _KAFKA_AUTH_PARAMETER,
                        "name": {"type": "string", "minLength": 1},
                        "containerName": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}

SERVICE_MONITOR = _resource(
    ["monitoring.coreos.com/v1"],
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector"],
        "properties": {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {
                "type": "object",
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "port": {"type": "string"},
                        "targetPort": {"type": ["string", "integer"]},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                        "honorLabels": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

PROMETHEUS_RULE = _resource(
    ["monitoring.coreos.com/v1"],
    "PrometheusRule",
    {
        "type": "object",
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": DURATION,
                        "limit": {"type": "integer"},
                        "query_offset": DURATION,
                        "labels": STRING_MAP,
                        "partial_response_strategy": {"type": "string"},
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["expr"],
                                "properties": {
                                    "alert": {"type": "string"},
                                    "record": {"type": "string"},
                                    "expr": {"type": ["string", "integer"]},
                                    "for": DURATION,
                                    "keep_firing_for": DURATION,
                                    "labels": STRING_MAP,
                                    "annotations": STRING_MAP,
                                },
                                "additionalProperties": False,
                                # "Only one of `record` and `alert` must be set."
                                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            },
                        },
                    },
                    "additionalProperties": False,
                },
            }
        },
        "additionalProperties": False,
    },
)

KAFKA_TOPIC = _resource(
    ["kafka.strimzi.io/v1", "kafka.strimzi.io/v1beta2"],
    "KafkaTopic",
    {
        "type": "object",
        "properties": {
            "topicName": {"type": "string", "minLength": 1},
            "partitions": {"type": "integer", "minimum": 1},
            "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
            "config": {"type": "object"},
        },
        "additionalProperties": False,
    },
)
# The Topic Operator only reconciles topics labelled with their Kafka cluster.
KAFKA_TOPIC["properties"]["metadata"] = {
    **METADATA,
    "required": ["name", "labels"],
    "properties": {
        **METADATA["properties"],
        "labels": {**STRING_MAP, "required": ["strimzi.io/cluster"]},
    },
}

CUSTOM_RESOURCE_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": SCALED_OBJECT,
    "TriggerAuthentication": TRIGGER_AUTHENTICATION,
    "ServiceMonitor": SERVICE_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
    "KafkaTopic": KAFKA_TOPIC,
}
