{{/* Object names: RELEASE-NAME, or RELEASE when it already contains NAME; at most 63 characters (a label value's limit). */}}
{{- define "probepilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "probepilot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "probepilot.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Selector labels. app.kubernetes.io/name is always the chart's name: ServiceMonitor
and PodMonitor take the job label from it, and the alert rules select job="probepilot".
*/}}
{{- define "probepilot.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "probepilot.labels" -}}
{{ include "probepilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "probepilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "probepilot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The agent's port: the port of config.listen (HOST:PORT or [IPv6]:PORT), which the container port, probes and Service follow. */}}
{{- define "probepilot.port" -}}
{{- $listen := toString (required "config.listen is required (HOST:PORT): the chart derives the container port from it" .Values.config.listen) }}
{{- $port := regexFind "[0-9]+$" $listen }}
{{- if not $port }}
{{- fail (printf "config.listen %q has no port (expected HOST:PORT)" $listen) }}
{{- end }}
{{- $port }}
{{- end }}
