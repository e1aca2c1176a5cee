{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "toolgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart name.
*/}}
{{- define "toolgate.fullname" -}}
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

{{- define "toolgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (a Deployment's selector is immutable).
*/}}
{{- define "toolgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "toolgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "toolgate.labels" -}}
helm.sh/chart: {{ include "toolgate.chart" . }}
{{ include "toolgate.selectorLabels" . }}
app.kubernetes.io/version: {{ include "toolgate.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: toolgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "toolgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "toolgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "toolgate.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
repository:tag, or repository:tag@digest when a digest is given.
*/}}
{{- define "toolgate.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (include "toolgate.imageTag" .) }}
{{- with .Values.image.digest }}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" .) }}
{{- fail (printf "image.digest must look like sha256:<64 hex digits>, got %q" .) }}
{{- end }}
{{- $ref = printf "%s@%s" $ref . }}
{{- end }}
{{- $ref }}
{{- end }}

{{- define "toolgate.imagePullPolicy" -}}
{{- if .Values.image.pullPolicy }}
{{- .Values.image.pullPolicy }}
{{- else if .Values.image.digest }}
{{- "IfNotPresent" }}
{{- else }}
{{- "Always" }}
{{- end }}
{{- end }}

{{/*
Fixed container ports: the chart sets TOOLGATE_LISTEN and TOOLGATE_METRICS_LISTEN to them.
*/}}
{{- define "toolgate.grpcContainerPort" -}}50051{{- end }}
{{- define "toolgate.metricsContainerPort" -}}9464{{- end }}

{{- define "toolgate.postgres" -}}
{{- if eq .Values.database.mode "postgres" }}true{{ end }}
{{- end }}

{{/*
Fails early on contradictory values; included by the Deployment.
*/}}
{{- define "toolgate.validate" -}}
{{- $mode := .Values.database.mode }}
{{- if not (has $mode (list "sqlite" "postgres")) }}
{{- fail (printf "database.mode must be sqlite or postgres, got %q" $mode) }}
{{- end }}
{{- if and (eq $mode "postgres") (not .Values.database.existingSecret) }}
{{- fail "database.mode=postgres needs database.existingSecret: the name of a Secret whose key database.existingSecretKey (default database-url) holds postgres://user:password@host:5432/db" }}
{{- end }}
{{- if and (eq $mode "sqlite") (not .Values.database.existingSecret) (not (hasPrefix "sqlite://" .Values.database.url)) }}
{{- fail (printf "database.url must be a sqlite:// URL in sqlite mode (got %q); use database.mode=postgres with database.existingSecret for PostgreSQL" .Values.database.url) }}
{{- end }}
{{- if and (eq $mode "sqlite") .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs database.mode=postgres: sqlite mode runs exactly one replica" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: the name of a kubernetes.io/tls Secret (tls.crt, tls.key, and ca.crt with tls.clientAuth)" }}
{{- end }}
{{- if and .Values.http.ingress.enabled (not .Values.http.enabled) }}
{{- fail "http.ingress.enabled needs http.enabled: the Ingress routes to the Service's http port (the HTTP listener)" }}
{{- end }}
{{- if and .Values.http.ingress.enabled (not .Values.http.ingress.host) }}
{{- fail "http.ingress.enabled needs http.ingress.host: the host in the Slack app's Request URL (https://<host>/slack/interactions)" }}
{{- end }}
{{- if not (has .Values.logFormat (list "json" "text")) }}
{{- fail (printf "logFormat must be json or text, got %q" .Values.logFormat) }}
{{- end }}
{{- range $key := list "delaySeconds" "graceSeconds" "marginSeconds" }}
{{- $v := index $.Values.drain $key }}
{{- if not (include "toolgate.isNumber" $v) }}
{{- fail (printf "drain.%s must be a whole number of seconds >= 0, got %v" $key $v) }}
{{- end }}
{{- if or (lt (float64 $v) 0.0) (ne (float64 (int64 $v)) (float64 $v)) }}
{{- fail (printf "drain.%s must be a whole number of seconds >= 0, got %v" $key $v) }}
{{- end }}
{{- end }}
{{- $reserved := list "listen" "metrics_listen" "http_listen" "database_url" "bootstrap_admin_key" "log_format" "shutdown_grace" "shutdown_delay" }}
{{- range $key, $_ := .Values.config }}
{{- if or (has $key $reserved) (hasPrefix "tls_" $key) }}
{{- fail (printf "config.%s is set by the chart (environment variable TOOLGATE_%s); use the chart's own value for it (see README)" $key (upper $key)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
toolgate.toml from .Values.config: strings (TOML basic strings via JSON escaping), whole numbers,
other numbers, and booleans. Depending on its version and on --set, Helm hands numbers over as
float64, int64 or json.Number; whole numbers are always printed as integers (toToml may print a
float64 100 as 100.0, which the server's integer settings reject).
*/}}
{{- define "toolgate.toml" -}}
# Rendered by the toolgate chart from .Values.config; the chart sets the listen addresses,
# database URL, bootstrap admin key, log format, shutdown timings and TLS through TOOLGATE_*
# environment variables.
{{- range $key := keys .Values.config | sortAlpha }}
{{- $v := index $.Values.config $key }}
{{- if not (regexMatch "^[A-Za-z0-9_-]+$" $key) }}
{{- fail (printf "config key %q is not a bare TOML key" $key) }}
{{- end }}
{{- if include "toolgate.isNumber" $v }}
{{- if eq (float64 (int64 $v)) (float64 $v) }}
{{ $key }} = {{ int64 $v }}
{{- else }}
{{ $key }} = {{ toString $v }}
{{- end }}
{{- else if eq (typeOf $v) "string" }}
{{ $key }} = {{ toJson $v }}
{{- else if kindIs "bool" $v }}
{{ $key }} = {{ $v }}
{{- else }}
{{- fail (printf "config.%s must be a string, number or boolean, got %s" $key (kindOf $v)) }}
{{- end }}
{{- end }}
{{ end }}

{{/*
Seconds of the drain delay, and whether kubelet's native preStop sleep does it (Kubernetes 1.30+:
the PodLifecycleSleepAction feature, beta and on by default since 1.30).
*/}}
{{- define "toolgate.nativeSleep" -}}
{{- if and (gt (int64 .Values.drain.delaySeconds) 0) (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version) }}true{{ end }}
{{- end }}

{{/*
A probe's timings from .Values.probes.<probe>.
*/}}
{{- define "toolgate.probeTimings" -}}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- with .successThreshold }}
successThreshold: {{ . }}
{{- end }}
{{- end }}

{{/*
"true" when the value is a number in any of the forms Helm produces (json.Number is a string kind).
*/}}
{{- define "toolgate.isNumber" -}}
{{- if has (typeOf .) (list "json.Number" "float64" "float32" "int64" "int32" "int" "uint64" "uint32" "uint") }}true{{ end }}
{{- end }}
