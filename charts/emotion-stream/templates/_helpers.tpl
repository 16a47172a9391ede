{{/* Names ------------------------------------------------------------------- */}}
{{- define "es.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "es.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* StatefulSet pod names are <name>-<ordinal> and a hostname label; keep room for both. */}}
{{- define "es.worker.name" -}}
{{- printf "%s-worker" (include "es.fullname" . | trunc 50 | trimSuffix "-") -}}
{{- end -}}
{{- define "es.triton.name" -}}
{{- printf "%s-triton" (include "es.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}
{{- define "es.models.name" -}}
{{- printf "%s-models" (include "es.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}
{{- define "es.kafkaSecret.name" -}}
{{- printf "%s-kafka" (include "es.fullname" . | trunc 57 | trimSuffix "-") -}}
{{- end -}}

{{- define "es.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "es.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------ */}}
{{- define "es.labels" -}}
app.kubernetes.io/name: {{ include "es.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "es.commonLabels" . }}
{{- end -}}

{{/* Labels besides the selector's (pod templates add the selector labels themselves). */}}
{{- define "es.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: emotion-stream
{{- end -}}

{{- define "es.selectorLabels" -}}
app.kubernetes.io/name: {{ include "es.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Kafka ------------------------------------------------------------------- */}}
{{- define "es.kafka.sasl" -}}
{{- hasPrefix "SASL_" .Values.kafka.securityProtocol -}}
{{- end -}}
{{- define "es.kafka.tls" -}}
{{- has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") -}}
{{- end -}}

{{/* The Secret holding the SASL password: the user's, or the one the chart makes. */}}
{{- define "es.kafka.passwordSecret" -}}
{{- default (include "es.kafka.secret.name" .) .Values.kafka.sasl.existingSecret -}}
{{- end -}}
{{- define "es.kafka.secret.name" -}}
{{- include "es.kafkaSecret.name" . -}}
{{- end -}}

{{/* Where secret files are mounted in the worker (and the paths its *_FILE settings name). */}}
{{- define "es.secretsDir" -}}/var/run/secrets/emotion-stream{{- end -}}

{{/* Most replicas: more consumers than partitions of `tweets` would sit idle. */}}
{{- define "es.maxReplicas" -}}
{{- $max := int .max -}}
{{- if eq $max 0 -}}{{- $max = int .root.Values.kafka.topics.partitions -}}{{- end -}}
{{- $max -}}
{{- end -}}

{{- define "es.triton.url" -}}
{{- if .Values.triton.enabled -}}
{{- printf "%s:%d" (include "es.triton.name" .) (int .Values.triton.ports.grpc) -}}
{{- else -}}
{{- required "triton.externalUrl is required when triton.enabled is false" .Values.triton.externalUrl -}}
{{- end -}}
{{- end -}}

{{/* Model repository: the folder of the served model inside the pods. */}}
{{- define "es.modelsPath" -}}/models{{- end -}}
{{- define "es.modelDir" -}}
{{- printf "%s/%s" (include "es.modelsPath" .) .Values.modelRepository.modelName -}}
{{- end -}}
{{- define "es.modelVersionDir" -}}
{{- printf "%s/%s" (include "es.modelDir" .) (default "1" .Values.modelRepository.modelVersion) -}}
{{- end -}}
{{- define "es.objectStorage.scheme" -}}
{{- $url := .Values.modelRepository.objectStorage.url -}}
{{- if hasPrefix "s3://" $url -}}s3
{{- else if hasPrefix "gs://" $url -}}gs
{{- else -}}
{{- fail (printf "modelRepository.objectStorage.url must start with s3:// or gs:// (got %q)" $url) -}}
{{- end -}}
{{- end -}}

{{/* Restricted pod security: non-root, no privilege escalation, no capabilities. */}}
{{- define "es.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Checks every render runs: combinations that would deploy something broken. */}}
{{- define "es.validate" -}}
{{- $v := .Values -}}
{{- if not (has $v.kafka.securityProtocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) -}}
{{- fail (printf "kafka.securityProtocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (got %q)" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if eq (include "es.kafka.sasl" .) "true" -}}
{{- if not (has $v.kafka.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) -}}
{{- fail (printf "kafka.sasl.mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with %s" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if not $v.kafka.sasl.username -}}
{{- fail (printf "kafka.sasl.username is required with %s" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if and (not $v.kafka.sasl.existingSecret) (not $v.kafka.sasl.password) -}}
{{- fail (printf "kafka.sasl.existingSecret (or kafka.sasl.password) is required with %s" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- end -}}
{{- /* The worker refuses both of these at start-up (worker/security.py); say so at install. */ -}}
{{- $inClear := and (eq $v.kafka.securityProtocol "SASL_PLAINTEXT") (eq $v.kafka.sasl.mechanism "PLAIN") -}}
{{- if and $inClear (not $v.kafka.sasl.allowCleartextPassword) -}}
{{- fail "kafka.securityProtocol SASL_PLAINTEXT with kafka.sasl.mechanism PLAIN sends the password in clear: use SASL_SSL or SCRAM, or set kafka.sasl.allowCleartextPassword: true to accept it" -}}
{{- end -}}
{{- if and $v.kafka.sasl.allowCleartextPassword (not $inClear) -}}
{{- fail "kafka.sasl.allowCleartextPassword only applies to SASL_PLAINTEXT with PLAIN: unset it" -}}
{{- end -}}
{{- if not (has $v.worker.delivery (list "at_least_once" "exactly_once")) -}}
{{- fail (printf "worker.delivery must be at_least_once or exactly_once (got %q)" $v.worker.delivery) -}}
{{- end -}}
{{- if and $v.keda.enabled $v.hpa.enabled -}}
{{- fail "keda.enabled and hpa.enabled are exclusive: both would drive the worker's replica count" -}}
{{- end -}}
{{- if not (has $v.modelRepository.source (list "export" "objectStorage")) -}}
{{- fail (printf "modelRepository.source must be export or objectStorage (got %q)" $v.modelRepository.source) -}}
{{- end -}}
{{- if eq $v.modelRepository.source "objectStorage" -}}
{{- $_ := include "es.objectStorage.scheme" . -}}
{{- end -}}
{{- $tritonTimeout := float64 (default 10 (index $v.worker.settings "TRITON_TIMEOUT_S")) -}}
{{- $needed := addf $tritonTimeout 45 -}}
{{- if lt (float64 $v.worker.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must be at least TRITON_TIMEOUT_S + 45 s (%v): the worker drains in-flight batches, flushes and commits before it exits" $v.worker.terminationGracePeriodSeconds $needed) -}}
{{- end -}}
{{- $owned := list "KAFKA_BOOTSTRAP_SERVERS" "INPUT_TOPIC" "OUTPUT_TOPIC" "DLQ_TOPIC" "CONSUMER_GROUP" "SECURITY_PROTOCOL" "SASL_MECHANISM" "SASL_USERNAME" "SASL_PASSWORD" "SASL_PASSWORD_FILE" "ALLOW_CLEARTEXT_PASSWORD" "SSL_CAFILE" "SSL_CERTFILE" "SSL_KEYFILE" "TRITON_URL" "MODEL_NAME" "MODEL_VERSION" "MODEL_REPOSITORY" "DELIVERY" "WORKER_ID" "METRICS_PORT" "METRICS_HOST" "FAILPOINT" -}}
{{- range $key, $_ := $v.worker.settings -}}
{{- if has (upper $key) $owned -}}
{{- fail (printf "worker.settings.%s: set through the chart's own values (kafka.*, worker.delivery, worker.metricsPort, triton.*, modelRepository.*), not worker.settings" $key) -}}
{{- end -}}
{{- if hasPrefix "EMOTION_STREAM_" (upper $key) -}}
{{- fail (printf "worker.settings.%s: give the name without the EMOTION_STREAM_ prefix" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Object storage: Triton's repository URL (an S3-compatible endpoint goes inside it). */}}
{{- define "es.objectStorage.tritonUrl" -}}
{{- $os := .Values.modelRepository.objectStorage -}}
{{- if and (eq (include "es.objectStorage.scheme" .) "s3") $os.s3Endpoint -}}
{{- printf "s3://%s/%s" (trimSuffix "/" $os.s3Endpoint) (trimPrefix "s3://" $os.url) -}}
{{- else -}}
{{- $os.url -}}
{{- end -}}
{{- end -}}

{{/* Object storage credentials: a file from a Secret, and the variables that name it. */}}
{{- define "es.objectStorage.credentialsPath" -}}
{{- printf "%s/storage/credentials" (include "es.secretsDir" .) -}}
{{- end -}}
{{- define "es.objectStorage.env" -}}
{{- $os := .Values.modelRepository.objectStorage -}}
{{- $scheme := include "es.objectStorage.scheme" . -}}
{{- if $os.credentialsSecret }}
{{- if eq $scheme "s3" }}
- name: AWS_SHARED_CREDENTIALS_FILE
  value: {{ include "es.objectStorage.credentialsPath" . }}
{{- else }}
- name: GOOGLE_APPLICATION_CREDENTIALS
  value: {{ include "es.objectStorage.credentialsPath" . }}
- name: CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE
  value: {{ include "es.objectStorage.credentialsPath" . }}
{{- end }}
{{- end }}
{{- if and (eq $scheme "s3") $os.region }}
- name: AWS_DEFAULT_REGION
  value: {{ $os.region | quote }}
{{- end }}
{{- end -}}
{{- define "es.objectStorage.volume" -}}
{{- if .Values.modelRepository.objectStorage.credentialsSecret }}
- name: storage-credentials
  secret:
    secretName: {{ .Values.modelRepository.objectStorage.credentialsSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.modelRepository.objectStorage.credentialsKey }}
        path: credentials
{{- end }}
{{- end -}}
{{- define "es.objectStorage.volumeMount" -}}
{{- if .Values.modelRepository.objectStorage.credentialsSecret }}
- name: storage-credentials
  mountPath: {{ include "es.secretsDir" . }}/storage
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod-level security: the images' non-root user (uid 10001); fsGroup lets it read secret files. */}}
{{- define "es.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Scale-down for both autoscalers: one worker per termination grace period, after the
     load has stayed low for the stabilization window. A leaving worker drains (one Triton
     deadline, flush, commit) and the group rebalances; removing the next before that has
     finished only moves partitions back and forth. Scale-up is not held back. */}}
{{- define "es.scalingBehavior" -}}
scaleDown:
  stabilizationWindowSeconds: {{ .stabilization }}
  selectPolicy: Min
  policies:
    - type: Pods
      value: 1
      periodSeconds: {{ .root.Values.worker.terminationGracePeriodSeconds }}
scaleUp:
  stabilizationWindowSeconds: 0
  selectPolicy: Max
  policies:
    - type: Pods
      value: 4
      periodSeconds: 30
    - type: Percent
      value: 100
      periodSeconds: 30
{{- end -}}

{{/* The worker's auto_offset_reset (earliest unless worker.settings says otherwise). */}}
{{- define "es.offsetReset" -}}
{{- $settings := .Values.worker.settings -}}
{{- default "earliest" (index $settings "AUTO_OFFSET_RESET" | default (index $settings "auto_offset_reset")) -}}
{{- end -}}
