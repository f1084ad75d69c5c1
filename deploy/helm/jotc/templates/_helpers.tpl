{{/* Names and labels, as `helm create` makes them. */}}
{{- define "jotc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jotc.fullname" -}}
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

{{- define "jotc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "jotc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "api"). */}}
{{- define "jotc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jotc.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "jotc.image" -}}
{{- $image := .image -}}
{{- $repository := $image.repository -}}
{{- if .ctx.Values.imageRegistry }}{{- $repository = printf "%s/%s" .ctx.Values.imageRegistry $image.repository -}}{{- end -}}
{{- printf "%s:%s" $repository (default .ctx.Chart.AppVersion $image.tag) -}}
{{- end }}

{{/* Granian workers per pod: the CPU limit, rounded up (at least 1). */}}
{{- define "jotc.apiWorkers" -}}
{{- $cpu := toString .Values.api.resources.limits.cpu -}}
{{- if hasSuffix "m" $cpu -}}
{{- max 1 (div (add (trimSuffix "m" $cpu | int) 999) 1000) -}}
{{- else -}}
{{- max 1 (ceil (float64 $cpu) | int) -}}
{{- end -}}
{{- end }}

{{- define "jotc.secretName" -}}{{ include "jotc.fullname" . }}-secrets{{- end }}

{{- define "jotc.databaseSecret" -}}
{{- if or .Values.database.url .Values.evaluation.postgresql.enabled -}}
{{ include "jotc.secretName" . }}
{{- else -}}
{{ required "database.existingSecret or database.url (or evaluation.postgresql.enabled) is required" .Values.database.existingSecret }}
{{- end -}}
{{- end }}

{{- define "jotc.databaseSecretKey" -}}
{{- if or .Values.database.url .Values.evaluation.postgresql.enabled -}}database-url{{- else -}}{{ .Values.database.existingSecretKey }}{{- end -}}
{{- end }}

{{- define "jotc.redisConfigured" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret .Values.evaluation.redis.enabled -}}true{{- end -}}
{{- end }}

{{- define "jotc.redisSecret" -}}
{{- if or .Values.redis.url .Values.evaluation.redis.enabled -}}{{ include "jotc.secretName" . }}{{- else -}}{{ .Values.redis.existingSecret }}{{- end -}}
{{- end }}

{{- define "jotc.redisSecretKey" -}}
{{- if or .Values.redis.url .Values.evaluation.redis.enabled -}}redis-url{{- else -}}{{ .Values.redis.existingSecretKey }}{{- end -}}
{{- end }}

{{- define "jotc.adminSecret" -}}
{{- default (include "jotc.secretName" .) .Values.adminToken.existingSecret -}}
{{- end }}

{{/* The restricted Pod Security profile, for every container of the chart. */}}
{{- define "jotc.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "jotc.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "jotc.apiURL" -}}
http://{{ include "jotc.fullname" . }}-api:{{ .Values.api.service.port }}
{{- end }}
