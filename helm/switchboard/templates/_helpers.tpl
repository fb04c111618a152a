{{/*
Chart name, truncated to the 63 characters DNS names allow.
*/}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart> unless the release name already
contains the chart name.
*/}}
{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "switchboard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ include "switchboard.chart" . }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchboard.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding credentials (chart-made or existing). */}}
{{- define "switchboard.secretName" -}}
{{- default (include "switchboard.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/* "true" when Redis is configured (shared state across pods). */}}
{{- define "switchboard.redisEnabled" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{/* Optional integer settings: values key -> TOML key. */}}
{{- define "switchboard.tomlIntKeys" -}}
historyLen: history_len
maxFrameBytes: max_frame_bytes
maxBodyBytes: max_body_bytes
outboundQueue: outbound_queue
connRatePerSec: conn_rate_per_sec
connBurst: conn_burst
adapterRatePerSec: adapter_rate_per_sec
idleTimeoutSecs: idle_timeout_secs
heartbeatSecs: heartbeat_secs
{{- end }}

{{/* Seconds of the preStop sleep (0 = no hook). */}}
{{- define "switchboard.preStopSeconds" -}}
{{- int .Values.lifecycle.preStopSleepSeconds }}
{{- end }}

{{/* Pod grace period: explicit, or preStop + drain + 10s of slack. */}}
{{- define "switchboard.terminationGracePeriodSeconds" -}}
{{- $floor := add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.config.shutdownGraceSecs) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor 10 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Cross-field checks the JSON schema cannot express. Included by every
template that matters, so `helm template` fails early with a clear message.
*/}}
{{- define "switchboard.validate" -}}
{{- $multi := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- if and $multi (not (include "switchboard.redisEnabled" .)) }}
{{- fail "switchboard: more than one replica (replicaCount > 1 or autoscaling.enabled) needs shared state: set redis.url or redis.existingSecret" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "switchboard: set only one of redis.url and redis.existingSecret" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "switchboard: autoscaling.minReplicas must be <= autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "switchboard: autoscaling needs targetCPUUtilizationPercentage and/or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if and (eq .Values.auth.jwtAlgorithm "RS256") (not .Values.auth.existingSecret) (not .Values.auth.jwtPublicKey) }}
{{- fail "switchboard: auth.jwtAlgorithm=RS256 needs auth.jwtPublicKey (PEM) or auth.existingSecret with key jwt-public-key" }}
{{- end }}
{{- if and (eq .Values.auth.jwtAlgorithm "HS256") .Values.auth.jwtPublicKey }}
{{- fail "switchboard: auth.jwtPublicKey is only used with auth.jwtAlgorithm=RS256" }}
{{- end }}
{{- $managed := concat (values (include "switchboard.tomlIntKeys" . | fromYaml)) (list "log_format" "shutdown_grace_secs" "listen" "node_id" "redis_url" "subscribe" "jwt_public_key_file") }}
{{- range $key, $_ := .Values.config.extra }}
{{- if has $key $managed }}
{{- fail (printf "switchboard: config.extra.%s is set by the chart (use the config.* value or env instead)" $key) }}
{{- end }}
{{- end }}
{{- if .Values.podDisruptionBudget.enabled }}
{{- $min := .Values.podDisruptionBudget.minAvailable }}
{{- $max := .Values.podDisruptionBudget.maxUnavailable }}
{{- if eq (kindIs "invalid" $min) (kindIs "invalid" $max) }}
{{- fail "switchboard: podDisruptionBudget needs exactly one of minAvailable and maxUnavailable" }}
{{- end }}
{{- end }}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- $floor := add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.config.shutdownGraceSecs) }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $floor) }}
{{- fail (printf "switchboard: terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds + config.shutdownGraceSecs (%d)" (int .Values.terminationGracePeriodSeconds) (int $floor)) }}
{{- end }}
{{- end }}
{{- end }}
