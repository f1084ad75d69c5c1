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

{{/* One tag for every image (imageTag, else appVersion); a digest pins one image's content. */}}
{{- define "jotc.image" -}}
{{- $image := .image -}}
{{- $repository := $image.repository -}}
{{- if .ctx.Values.imageRegistry }}{{- $repository = printf "%s/%s" .ctx.Values.imageRegistry $image.repository -}}{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .ctx.Chart.AppVersion .ctx.Values.imageTag) -}}
{{- end -}}
{{- end }}

{{/* CPU quantity in millicores ("1500m", "2", 2.5); 0 when unset. */}}
{{- define "jotc.millicores" -}}
{{- $cpu := toString (default "" .) -}}
{{- if not $cpu -}}0
{{- else if hasSuffix "m" $cpu -}}{{ trimSuffix "m" $cpu | int }}
{{- else -}}{{ mulf (float64 $cpu) 1000 | int }}
{{- end -}}
{{- end }}

{{/* Memory quantity in bytes ("512Mi", "1Gi", "500M", 536870912); 0 when unset. */}}
{{- define "jotc.bytes" -}}
{{- $quantity := toString (default "" .) | trim -}}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $suffix := regexFind "[a-zA-Z]+$" $quantity -}}
{{- $number := trimSuffix $suffix $quantity -}}
{{- if not $quantity -}}0
{{- else if not (regexMatch "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$" $quantity) -}}{{- fail (printf "%q is not a memory quantity this chart understands (bytes, or a number with Ki, Mi, Gi, Ti, k, M, G or T)" $quantity) -}}
{{- else if and $suffix (not (hasKey $units $suffix)) -}}{{- fail (printf "%q is not a memory quantity this chart understands (use Mi or Gi)" $quantity) -}}
{{- else -}}{{ mulf (float64 $number) (default 1 (get $units $suffix)) | int64 }}
{{- end -}}
{{- end }}

{{/* Granian workers per pod: api.workers, else the CPU limit rounded down (a fractional limit
must not oversubscribe: Granian workers each want a whole core), else the CPU request rounded
down, else 1 (NOTES warns). At least 1. */}}
{{- define "jotc.apiWorkers" -}}
{{- $resources := .Values.api.resources | default dict -}}
{{- $limit := include "jotc.millicores" (($resources.limits | default dict).cpu) | int -}}
{{- $request := include "jotc.millicores" (($resources.requests | default dict).cpu) | int -}}
{{- if .Values.api.workers -}}{{ .Values.api.workers }}
{{- else if $limit -}}{{ max 1 (div $limit 1000) }}
{{- else if $request -}}{{ max 1 (div $request 1000) }}
{{- else -}}1
{{- end -}}
{{- end }}

{{/* Where the API's worker count came from, for NOTES; empty when from api.workers or the limit. */}}
{{- define "jotc.apiWorkersWarning" -}}
{{- $resources := .Values.api.resources | default dict -}}
{{- if and (not .Values.api.workers) (not ((($resources.limits | default dict).cpu))) -}}
{{- if (($resources.requests | default dict).cpu) -}}
api.resources.limits.cpu is not set: {{ include "jotc.apiWorkers" . }} Granian worker(s) per pod, from the CPU request. Set api.workers to choose.
{{- else -}}
neither a CPU limit nor a CPU request is set: 1 Granian worker per pod. Set api.workers or api.resources.limits.cpu.
{{- end -}}
{{- end -}}
{{- end }}

{{/* The most API pods that may hold connections at once: max replicas, the rolling update's
surge, and the old pods still terminating (jotc.apiRollout). */}}
{{- define "jotc.apiMaxPods" -}}
{{- $plan := include "jotc.apiRollout" . | fromJson -}}
{{- add $plan.replicas $plan.surge $plan.terminating -}}
{{- end }}

{{/* Values that the schema cannot compare, checked at render time with a message saying what to do. */}}
{{- define "jotc.validate" -}}
{{- $auto := .Values.api.autoscaling -}}
{{- if and $auto.enabled (gt (int $auto.minReplicas) (int $auto.maxReplicas)) -}}
{{- fail (printf "api.autoscaling.minReplicas (%d) exceeds maxReplicas (%d)" (int $auto.minReplicas) (int $auto.maxReplicas)) -}}
{{- end -}}
{{- include "jotc.validateRollout" . -}}
{{- include "jotc.validateSettings" . -}}
{{- $lauto := .Values.locust.workers.autoscaling -}}
{{- if and $lauto.enabled (gt (int $lauto.minReplicas) (int $lauto.maxReplicas)) -}}
{{- fail (printf "locust.workers.autoscaling.minReplicas (%d) exceeds maxReplicas (%d)" (int $lauto.minReplicas) (int $lauto.maxReplicas)) -}}
{{- end -}}
{{- if and .Values.locust.enabled (eq .Values.locust.mode "headless") $lauto.enabled -}}
{{- fail "locust.workers.autoscaling is for mode ui: a headless run has a fixed swarm (the master waits for locust.workers.replicas workers), so set locust.workers.replicas instead" -}}
{{- end -}}
{{- if and .Values.locust.enabled .Values.locust.adminScenario (not (include "jotc.adminSecret" .)) -}}
{{- fail "locust.adminScenario needs the admin token: set adminToken.existingSecret (or adminToken.value)" -}}
{{- end -}}
{{- if and .Values.adminToken.existingSecret .Values.adminToken.value -}}
{{- fail "set adminToken.existingSecret or adminToken.value, not both" -}}
{{- end -}}
{{- $settings := .Values.api.settings | default dict -}}
{{- $rate := toString (default "0" $settings.JOTC_RATE_LIMIT) | trim -}}
{{- if and (ne $rate "0") (ne $rate "") (not $settings.JOTC_TRUSTED_PROXIES) -}}
{{- fail "api.settings.JOTC_RATE_LIMIT is on but JOTC_TRUSTED_PROXIES is not set: state the ingress controller's addresses (e.g. its pod CIDR), or every client behind it shares one limit" -}}
{{- end -}}
{{- $pool := int (default 4 $settings.JOTC_DB_POOL_SIZE) -}}
{{- $workers := include "jotc.apiWorkers" . | int -}}
{{- $pods := include "jotc.apiMaxPods" . | int -}}
{{- $podsSaid := include "jotc.apiMaxPodsSaid" . -}}
{{- $budget := int .Values.database.connectionBudget -}}
{{- $retention := ternary 1 0 (gt (int .Values.retention.days) 0) -}}
{{- $apiConnections := mul $pods $workers (add $pool 1) -}}
{{- $pooler := .Values.database.pooler -}}
{{- if include "jotc.pooled" . -}}
{{- /* Through a pooler: the API's connections are the pooler's clients; PostgreSQL sees the
pooler's server connections and the migration's direct one. While the pooler rolls, one instance
at a time (the chart's PgBouncer: maxSurge 1, maxUnavailable 0), its replicas, the surged instance
and the instance it replaced each hold a pool: a stopped instance keeps its server connections
until it exits, and the chart's PgBouncer keeps each new instance out of the count of available
ones (minReadySeconds) until the one stopped before it has had its whole grace period to exit. */ -}}
{{- $clients := add $apiConnections $retention -}}
{{- /* One instance may be away (its PodDisruptionBudget allows it, or it is restarting): the
others take its clients. */ -}}
{{- $serving := max 1 (sub (int $pooler.replicas) 1) -}}
{{- $accepted := mul (int $pooler.maxClientConn) $serving -}}
{{- if gt $clients $accepted -}}
{{- fail (printf "the API may open %d connections to the pooler (%s x workers %d x (JOTC_DB_POOL_SIZE %d + 1 for /readyz), + %d retention) but with one instance away it accepts %d (database.pooler.maxClientConn %d x (replicas %d - 1)): raise maxClientConn or the pooler's replicas, or lower the API's replicas, workers, pool size or api.rollout.maxSurge" $clients $podsSaid $workers $pool $retention $accepted (int $pooler.maxClientConn) (int $pooler.replicas)) -}}
{{- end -}}
{{- $readiness := ternary 1 0 (or (eq $pooler.type "pgbouncer") (ne $pooler.readinessDatabase "")) -}}
{{- $perInstance := add (int $pooler.defaultPoolSize) (int $pooler.reservePoolSize) $readiness -}}
{{- $server := add (mul (add (int $pooler.replicas) 2) $perInstance) 1 -}}
{{- if gt $server $budget -}}
{{- fail (printf "the pooler may open %d PostgreSQL connections ((database.pooler.replicas %d + 1 surge + 1 terminating) x (defaultPoolSize %d + reservePoolSize %d + %d for /readyz's entry), + 1 migration) but database.connectionBudget is %d: lower the pool sizes or the pooler's replicas, or raise the budget (and the server's max_connections)" $server (int $pooler.replicas) (int $pooler.defaultPoolSize) (int $pooler.reservePoolSize) $readiness $budget) -}}
{{- end -}}
{{- else -}}
{{- $needed := add $apiConnections 1 $retention -}}
{{- if gt $needed $budget -}}
{{- fail (printf "the API may open %d PostgreSQL connections (%s x workers %d x (JOTC_DB_POOL_SIZE %d + 1 for /readyz), + 1 migration, + %d retention) but database.connectionBudget is %d: lower replicas, workers, the pool size or api.rollout.maxSurge, put a pooler before PostgreSQL (database.pooler), or raise the budget (and the server's max_connections)" $needed $podsSaid $workers $pool $retention $budget) -}}
{{- end -}}
{{- end -}}
{{- if and (include "jotc.pooled" .) (not $pooler.existingSecret) (not .Values.evaluation.postgresql.enabled) -}}
{{- fail (printf "database.pooler.type=%s needs database.pooler.existingSecret: a Secret with the keys username and password of the role the API logs in with through the pooler" $pooler.type) -}}
{{- end -}}
{{- if and (eq $pooler.type "pgbouncer") (not .Values.pgbouncer.serverHost) (not .Values.evaluation.postgresql.enabled) -}}
{{- fail "database.pooler.type=pgbouncer needs pgbouncer.serverHost: PostgreSQL's host, which the chart's PgBouncer connects to (port: database.port)" -}}
{{- end -}}
{{- if and (eq $pooler.type "external") (not $pooler.host) -}}
{{- fail "database.pooler.type=external needs database.pooler.host: the host of your pooler (e.g. its Service), which the API connects to on database.pooler.port" -}}
{{- end -}}
{{- if and (eq $pooler.type "pgbouncer") (ge (int .Values.pgbouncer.preStopSleepSeconds) (int .Values.pgbouncer.terminationGracePeriodSeconds)) -}}
{{- fail (printf "pgbouncer.terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d): the transactions in flight finish after the sleep" (int .Values.pgbouncer.terminationGracePeriodSeconds) (int .Values.pgbouncer.preStopSleepSeconds)) -}}
{{- end -}}
{{- if and .Values.redis.sentinel.enabled .Values.evaluation.redis.enabled -}}
{{- fail "redis.sentinel is for a Redis you run with Sentinel; evaluation.redis is a single instance without one: turn one of them off" -}}
{{- end -}}
{{- $redisPool := int (default 16 $settings.JOTC_REDIS_MAX_CONNECTIONS) -}}
{{- $redisNeeded := mul $pods $workers $redisPool -}}
{{- if gt $redisNeeded (int .Values.redis.connectionBudget) -}}
{{- fail (printf "the API may open %d Redis connections (%s x workers %d x JOTC_REDIS_MAX_CONNECTIONS %d) but redis.connectionBudget is %d: lower replicas, workers, JOTC_REDIS_MAX_CONNECTIONS or api.rollout.maxSurge, or raise the budget (and Redis's maxclients)" $redisNeeded $podsSaid $workers $redisPool (int .Values.redis.connectionBudget)) -}}
{{- end -}}
{{- /* The memory budget (services/api/src/jotc_api/memory.py): 64Mi of the limit for Granian's
main process and socket buffers; each worker needs its own 160Mi plus JOTC_REQUEST_MEMORY (default
128Mi, or what the worker's share leaves after its 160Mi when that is less), which must hold one
request of the largest body (96 bytes a cloud it may carry, plus the body and 16 KiB) beside the
allowance set aside for small bodies (every request the worker may have in flight, at 256 bytes). */ -}}
{{- $mi := 1048576 -}}
{{- $clouds := int64 (default 100000 $settings.JOTC_MAX_CLOUDS) -}}
{{- $body := int64 (default (add (mul 3 $clouds) 16384) $settings.JOTC_MAX_BODY_BYTES) -}}
{{- $batch := int64 (default 128 $settings.JOTC_RECORDER_MAX_BATCH) -}}
{{- $small := mul $batch $pool (add 256 (mul 96 (min 256 $clouds)) 16384) -}}
{{- $largest := add $small $body (mul 96 (min $body $clouds)) 16384 -}}
{{- $limit := include "jotc.bytes" ((.Values.api.resources.limits | default dict).memory) | int64 -}}
{{- $perWorker := div (max (sub $limit (mul 64 $mi)) 0) $workers -}}
{{- $left := sub $perWorker (mul 160 $mi) -}}
{{- $requestMemory := include "jotc.bytes" $settings.JOTC_REQUEST_MEMORY | int64 -}}
{{- if and $requestMemory (gt $requestMemory $left) -}}
{{- fail (printf "api.resources.limits.memory gives each of %d worker(s) %dMi but a worker needs %dMi (160Mi of its own + JOTC_REQUEST_MEMORY %dMi): raise the limit, or lower api.workers or JOTC_REQUEST_MEMORY" $workers (div $perWorker $mi) (div (add (mul 160 $mi) $requestMemory) $mi) (div $requestMemory $mi)) -}}
{{- end -}}
{{- $effective := $requestMemory | default (min (mul 128 $mi) $left) -}}
{{- if lt $effective $largest -}}
{{- fail (printf "each of %d API worker(s) may hold %dMi of requests ((api.resources.limits.memory - 64Mi) / workers - 160Mi, at most JOTC_REQUEST_MEMORY), less than the small bodies' allowance (JOTC_RECORDER_MAX_BATCH x JOTC_DB_POOL_SIZE requests of 256 bytes) and one request of the largest body need (JOTC_MAX_BODY_BYTES %d, JOTC_MAX_CLOUDS %d: %d bytes): raise the memory limit or lower those limits" $workers (div (max $effective 0) $mi) $body $clouds $largest) -}}
{{- end -}}
{{- $deadline := int .Values.migrations.activeDeadlineSeconds -}}
{{- if gt (add $deadline 30) (int .Values.migrations.helmTimeoutSeconds) -}}
{{- fail (printf "migrations.activeDeadlineSeconds (%d) + 30 s must fit inside migrations.helmTimeoutSeconds (%d), the --timeout you give helm upgrade; otherwise Helm fails the release while the migration may still succeed" $deadline (int .Values.migrations.helmTimeoutSeconds)) -}}
{{- end -}}
{{- $run := add .Values.migrations.lockWaitSeconds (mul (add .Values.migrations.lockRetries 1) .Values.migrations.lockTimeoutSeconds) 30 -}}
{{- if gt (int $run) $deadline -}}
{{- fail (printf "migrations.activeDeadlineSeconds (%d) is shorter than one run's worst-case wait for locks (%d s: lockWaitSeconds + (lockRetries + 1) x lockTimeoutSeconds + back-off)" $deadline (int $run)) -}}
{{- end -}}
{{- $api := .Values.api.image.digest -}}
{{- $migrations := .Values.migrations.image.digest -}}
{{- if or (and $api (not $migrations)) (and $migrations (not $api)) -}}
{{- fail "set api.image.digest and migrations.image.digest together (or neither): the migration and the API must come from one build" -}}
{{- end -}}
{{- end }}

{{/* Pod template labels: the chart's labels and the component, each key once; podLabels may add
but not override. */}}
{{- define "jotc.podLabels" -}}
{{- $labels := merge (dict) (fromYaml (include "jotc.selectorLabels" (dict "ctx" .ctx "component" .component))) (fromYaml (include "jotc.labels" .ctx)) (.extra | default dict) -}}
{{- toYaml $labels -}}
{{- end }}

{{- define "jotc.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "jotc.secretName" -}}{{ include "jotc.fullname" . }}-secrets{{- end }}

{{/*
Where each secret comes from. Nothing is generated at render time: a render depends on its values
alone, so `helm template`, Argo CD and Flux render the same manifests every time. Production names
Secrets it created itself (existingSecret); evaluation installs may give the values, which the
chart then stores in its own Secrets (and which therefore also live in the release's values).
*/}}
{{- define "jotc.chartSecretData" -}}
{{- if and .Values.adminToken.value (not .Values.adminToken.existingSecret) }}
token: {{ .Values.adminToken.value | b64enc }}
{{- end }}
{{- if and .Values.database.url (not .Values.evaluation.postgresql.enabled) }}
database-url: {{ .Values.database.url | b64enc }}
{{- end }}
{{- if and .Values.redis.url (not .Values.evaluation.redis.enabled) }}
redis-url: {{ .Values.redis.url | b64enc }}
{{- end }}
{{- end }}

{{- define "jotc.evaluationSecret" -}}
{{- default (printf "%s-evaluation" (include "jotc.fullname" .)) .Values.evaluation.existingSecret -}}
{{- end }}

{{/* DATABASE_URL for every container that needs it: the evaluation StatefulSet's URL is composed
from its password by Kubernetes' $(VAR) expansion, so the password is read from its Secret and
never written into the template. */}}
{{- define "jotc.databaseEnv" -}}
{{- if .Values.evaluation.postgresql.enabled }}
- name: JOTC_EVALUATION_POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "jotc.evaluationSecret" . }}, key: postgres-password}
- name: DATABASE_URL
  value: {{ printf "postgresql://jotc:$(JOTC_EVALUATION_POSTGRES_PASSWORD)@%s-postgresql:5432/jotc" (include "jotc.fullname" .) | quote }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "jotc.databaseSecret" . }}
      key: {{ include "jotc.databaseSecretKey" . }}
{{- end }}
{{- end }}

{{/* "true" when the API connects through a pooler (database.pooler.type pgbouncer or external). */}}
{{- define "jotc.pooled" -}}
{{- if ne .Values.database.pooler.type "none" -}}true{{- end -}}
{{- end }}

{{/* Where the pooler answers: the chart's PgBouncer Service, or the external pooler's host. */}}
{{- define "jotc.poolerHost" -}}
{{- if eq .Values.database.pooler.type "pgbouncer" -}}{{ include "jotc.fullname" . }}-pgbouncer
{{- else -}}{{ .Values.database.pooler.host }}
{{- end -}}
{{- end }}

{{/* The login the API gives the pooler (and the chart's PgBouncer gives PostgreSQL): the keys
username and password of database.pooler.existingSecret, or with the evaluation PostgreSQL its
user and password. */}}
{{- define "jotc.poolerLoginEnv" -}}
{{- if .Values.database.pooler.existingSecret }}
- name: JOTC_POOLER_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ .Values.database.pooler.existingSecret }}, key: username}
- name: JOTC_POOLER_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.database.pooler.existingSecret }}, key: password}
{{- else }}
- {name: JOTC_POOLER_USERNAME, value: jotc}
- name: JOTC_POOLER_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "jotc.evaluationSecret" . }}, key: postgres-password}
{{- end }}
{{- end }}

{{/* DATABASE_URL of the API, its init container and the retention CronJob: through the pooler
when there is one (composed by Kubernetes from the login, so no password is in the template),
else the direct URL. The migration Job always takes jotc.databaseEnv, the direct URL. */}}
{{- define "jotc.apiDatabaseEnv" -}}
{{- if include "jotc.pooled" . }}
{{- include "jotc.poolerLoginEnv" . }}
- name: DATABASE_URL
  value: {{ printf "postgresql://$(JOTC_POOLER_USERNAME):$(JOTC_POOLER_PASSWORD)@%s:%d/%s" (include "jotc.poolerHost" .) (int .Values.database.pooler.port) .Values.database.pooler.database | quote }}
{{- with include "jotc.readinessDatabase" . }}
- name: JOTC_READINESS_DATABASE_URL
  value: {{ printf "postgresql://$(JOTC_POOLER_USERNAME):$(JOTC_POOLER_PASSWORD)@%s:%d/%s" (include "jotc.poolerHost" $) (int $.Values.database.pooler.port) . | quote }}
{{- end }}
{{- else }}
{{- include "jotc.databaseEnv" . }}
{{- end }}
{{- end }}

{{/* pgbouncer.ini of the chart's PgBouncer: one database, transaction pooling, the sizes the
budget check counted, SCRAM logins from the file the container writes from its Secret. */}}
{{/* The pooler's database entry for /readyz: the chart's PgBouncer always has one; an external
pooler's when database.pooler.readinessDatabase names it; else empty (/readyz uses DATABASE_URL). */}}
{{- define "jotc.readinessDatabase" -}}
{{- $pooler := .Values.database.pooler -}}
{{- if $pooler.readinessDatabase }}{{ $pooler.readinessDatabase }}
{{- else if eq $pooler.type "pgbouncer" }}{{ printf "%s_readiness" $pooler.database }}
{{- end -}}
{{- end }}

{{- define "jotc.pgbouncerIni" -}}
{{- $pooler := .Values.database.pooler -}}
{{- $server := .Values.pgbouncer.serverHost | default (printf "%s-postgresql" (include "jotc.fullname" .)) -}}
[databases]
{{ $pooler.database }} = host={{ $server }} port={{ .Values.database.port }} dbname={{ $pooler.database }}
; /readyz's own entry, one server connection (no reserve: the budget counts one): never queued behind the traffic
{{ include "jotc.readinessDatabase" . }} = host={{ $server }} port={{ .Values.database.port }} dbname={{ $pooler.database }} pool_size=1 reserve_pool=0 max_db_connections=1

[pgbouncer]
listen_addr = *
listen_port = {{ $pooler.port }}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = /var/run/pgbouncer/userlist.txt
pool_mode = transaction
max_client_conn = {{ $pooler.maxClientConn }}
default_pool_size = {{ $pooler.defaultPoolSize }}
reserve_pool_size = {{ $pooler.reservePoolSize }}
max_db_connections = {{ add $pooler.defaultPoolSize $pooler.reservePoolSize }}
ignore_startup_parameters = extra_float_digits
server_reset_query =
log_connections = 0
log_disconnections = 0
{{- range $key, $value := .Values.pgbouncer.settings }}
{{ $key }} = {{ $value }}
{{- end }}
{{- end }}

{{- define "jotc.redisEnv" -}}
{{- if .Values.evaluation.redis.enabled }}
- name: JOTC_EVALUATION_REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "jotc.evaluationSecret" . }}, key: redis-password}
- name: REDIS_URL
  value: {{ printf "redis://:$(JOTC_EVALUATION_REDIS_PASSWORD)@%s-redis:6379/0" (include "jotc.fullname" .) | quote }}
{{- else if or .Values.redis.url .Values.redis.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ ternary (include "jotc.secretName" .) .Values.redis.existingSecret (not (empty .Values.redis.url)) }}
      key: {{ ternary "redis-url" .Values.redis.existingSecretKey (not (empty .Values.redis.url)) }}
{{- end }}
{{- end }}

{{- define "jotc.databaseSecret" -}}
{{- if .Values.database.url -}}
{{ include "jotc.secretName" . }}
{{- else -}}
{{ required "database.existingSecret or database.url (or evaluation.postgresql.enabled) is required" .Values.database.existingSecret }}
{{- end -}}
{{- end }}

{{- define "jotc.databaseSecretKey" -}}
{{- if .Values.database.url -}}database-url{{- else -}}{{ .Values.database.existingSecretKey }}{{- end -}}
{{- end }}

{{/* The admin token's Secret, or nothing: without one the API's admin routes answer 401. */}}
{{- define "jotc.adminSecret" -}}
{{- if .Values.adminToken.existingSecret -}}{{ .Values.adminToken.existingSecret }}
{{- else if .Values.adminToken.value -}}{{ include "jotc.secretName" . }}
{{- end -}}
{{- end }}

{{- define "jotc.adminTokenEnv" -}}
{{- with include "jotc.adminSecret" . }}
- name: JOTC_ADMIN_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: token}
{{- end }}
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
{{- include "jotc.podSecurityFor" (dict "ctx" . "uid" 10001) -}}
{{- end }}

{{/* Seconds a headless run's Jobs may live: the wait for workers, the run (locust.headless.runTime,
one unit: s, m or h), and two minutes to spawn and write the reports. Nothing outlives it. */}}
{{- define "jotc.locustDeadlineSeconds" -}}
{{- $run := .Values.locust.headless.runTime | toString -}}
{{- $number := trimSuffix "s" (trimSuffix "m" (trimSuffix "h" $run)) | int -}}
{{- $unit := dict "s" 1 "m" 60 "h" 3600 -}}
{{- $seconds := mul $number (get $unit (substr (int (sub (len $run) 1)) (len $run) $run)) -}}
{{- add $seconds .Values.locust.headless.workersWaitSeconds 120 -}}
{{- end }}

{{- define "jotc.apiURL" -}}
http://{{ include "jotc.fullname" . }}-api:{{ .Values.api.service.port }}
{{- end }}

{{/* OpenTelemetry (api.otel) for a container of the chart: the standard OTEL_* variables, nothing
when off. Called with (dict "ctx" . "service" NAME "workload" "k8s.<kind>.name=<name>"): the API's
service name is api.otel.serviceName, the migration's jotc-migrate, the retention run's
jotc-retention; the pod's name and namespace and its workload go into the traces' resource. */}}
{{- define "jotc.otelEnv" -}}
{{- $ := .ctx -}}
{{- $service := .service -}}
{{- $workload := .workload -}}
{{- with $.Values.api.otel }}{{ if .enabled }}
- {name: OTEL_TRACES_EXPORTER, value: otlp}
{{- with .endpoint }}
- {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ . | quote }}}
{{- end }}
- {name: OTEL_EXPORTER_OTLP_PROTOCOL, value: {{ .protocol | quote }}}
- {name: OTEL_SERVICE_NAME, value: {{ $service | default .serviceName | quote }}}
- {name: OTEL_TRACES_SAMPLER, value: {{ .sampler | quote }}}
{{- with .samplerArg }}
- {name: OTEL_TRACES_SAMPLER_ARG, value: {{ . | quote }}}
{{- end }}
- name: K8S_POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: K8S_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=$(K8S_NAMESPACE),k8s.pod.name=$(K8S_POD_NAME),%s" $workload | quote }}
{{- range $name, $value := .env }}
- {name: {{ $name }}, value: {{ $value | toString | quote }}}
{{- end }}
{{- end }}{{ end }}
{{- end }}

{{/* The port the API's traces leave by (api.otel): egress.port, else the endpoint's own, else its
scheme's (443 for https, 80 for http); 0 when there is no endpoint (the SDK's default,
localhost, stays in the pod). */}}
{{- define "jotc.otlpPort" -}}
{{- $otel := .Values.api.otel -}}
{{- $port := int $otel.egress.port -}}
{{- if and (not $port) $otel.endpoint -}}
{{- $url := urlParse $otel.endpoint -}}
{{- $explicit := regexFind ":[0-9]+$" $url.host | trimPrefix ":" -}}
{{- $port = $explicit | default (ternary "443" "80" (eq $url.scheme "https")) | int -}}
{{- end -}}
{{- $port -}}
{{- end }}

{{/* A rolling-update bound (api.rollout.maxSurge or maxUnavailable) in pods, of (dict "value" V
"replicas" N "up" BOOL): a number as it is, a percent of the replicas rounded up (maxSurge) or down
(maxUnavailable), as Kubernetes resolves it. */}}
{{- define "jotc.rolloutPods" -}}
{{- $value := toString .value -}}
{{- if hasSuffix "%" $value -}}
{{- $share := mul .replicas (trimSuffix "%" $value | int) -}}
{{- ternary (div (add $share 99) 100) (div $share 100) .up -}}
{{- else -}}
{{- int .value -}}
{{- end -}}
{{- end }}

{{/* The API's rolling update at the most replicas it may run (api.autoscaling.maxReplicas with
autoscaling, else api.replicaCount), as JSON: replicas, surge, unavailable, rounds, roundSeconds,
seconds, terminating.
- surge and unavailable: api.rollout's bounds in pods; when both come to 0 Kubernetes takes 1
  unavailable, and so does this.
- rounds = ceil(replicas / (surge + unavailable)): each round starts surge new pods (and stops
  unavailable old ones) and waits for them; 25% surge at 20 pods is 5 a round, 4 rounds.
- roundSeconds = api.rollout.podStartSeconds (scheduling, image pull, the init container's schema
  check, start-up, the first readiness probe) + api.minReadySeconds; seconds = rounds x that.
- terminating: the old pods a round stops (surge + unavailable) keep their connections until they
  exit, up to terminationGracePeriodSeconds, and the Deployment does not count them against the
  surge; the pods stopped by every round that ended within one grace period, at most replicas. */}}
{{- define "jotc.apiRollout" -}}
{{- $api := .Values.api -}}
{{- $replicas := int (ternary $api.autoscaling.maxReplicas $api.replicaCount $api.autoscaling.enabled) -}}
{{- $surge := include "jotc.rolloutPods" (dict "value" $api.rollout.maxSurge "replicas" $replicas "up" true) | int -}}
{{- $unavailable := include "jotc.rolloutPods" (dict "value" $api.rollout.maxUnavailable "replicas" $replicas "up" false) | int -}}
{{- if and (eq $surge 0) (eq $unavailable 0) }}{{ $unavailable = 1 }}{{ end -}}
{{- $perRound := add $surge $unavailable -}}
{{- $rounds := div (sub (add $replicas $perRound) 1) $perRound -}}
{{- $round := add $api.rollout.podStartSeconds $api.minReadySeconds | int -}}
{{- $batches := div (sub (add $api.terminationGracePeriodSeconds $round) 1) $round -}}
{{- $terminating := min $replicas (mul $batches $perRound) -}}
{{- toJson (dict "replicas" $replicas "surge" $surge "unavailable" $unavailable "rounds" $rounds "roundSeconds" $round "seconds" (mul $rounds $round) "terminating" $terminating) -}}
{{- end }}

{{/* The API's pods in the budget messages: "N pods (max replicas R + surge S + T terminating)". */}}
{{- define "jotc.apiMaxPodsSaid" -}}
{{- $plan := include "jotc.apiRollout" . | fromJson -}}
{{- printf "%s pods (max replicas %d + surge %d + %d terminating)" (include "jotc.apiMaxPods" .) (int $plan.replicas) (int $plan.surge) (int $plan.terminating) -}}
{{- end }}

{{/* A rollout that cannot replace a pod, is marked failed while it progresses, or outlasts the
--timeout helm upgrade waits (migrations.helmTimeoutSeconds) is refused. */}}
{{- define "jotc.validateRollout" -}}
{{- $rollout := .Values.api.rollout -}}
{{- $zero := list "0" "0%" -}}
{{- if and (has (toString $rollout.maxSurge) $zero) (has (toString $rollout.maxUnavailable) $zero) -}}
{{- fail "api.rollout.maxSurge and api.rollout.maxUnavailable are both 0, so a rollout could replace no pod: set maxSurge (e.g. 25%)" -}}
{{- end -}}
{{- $plan := include "jotc.apiRollout" . | fromJson -}}
{{- $progress := int $rollout.progressDeadlineSeconds -}}
{{- $minReady := int .Values.api.minReadySeconds -}}
{{- if le $progress $minReady -}}
{{- fail (printf "api.rollout.progressDeadlineSeconds (%d) must exceed api.minReadySeconds (%d): Kubernetes refuses the Deployment otherwise" $progress $minReady) -}}
{{- end -}}
{{- if lt $progress (int $plan.roundSeconds) -}}
{{- fail (printf "api.rollout.progressDeadlineSeconds (%d) is shorter than one round of the rollout (%d s: podStartSeconds %d + minReadySeconds %d), so Kubernetes would mark every rollout failed: raise it" $progress (int $plan.roundSeconds) (int $rollout.podStartSeconds) $minReady) -}}
{{- end -}}
{{- $timeout := int .Values.migrations.helmTimeoutSeconds -}}
{{- if gt (int $plan.seconds) $timeout -}}
{{- fail (printf "rolling %d API pods takes about %d s (%d rounds of %d surge + %d unavailable, each api.rollout.podStartSeconds %d + api.minReadySeconds %d), more than migrations.helmTimeoutSeconds (%d), the --timeout helm upgrade waits: raise api.rollout.maxSurge (e.g. 25%%) or the timeout" (int $plan.replicas) (int $plan.seconds) (int $plan.rounds) (int $plan.surge) (int $plan.unavailable) (int $rollout.podStartSeconds) $minReady $timeout) -}}
{{- end -}}
{{- end }}

{{/* api.settings keys the chart sets itself, each with the value to set instead: one set here too
would be ignored (the container's env wins over the ConfigMap, and the ConfigMap's own key is
rendered after the settings). The schema refuses names other than JOTC_*, LOG_LEVEL, LOG_FORMAT
(DATABASE_URL, REDIS_URL, PORT, REDIS_SENTINELS, OTEL_* …) and a plaintext JOTC_ADMIN_TOKEN. */}}
{{- define "jotc.validateSettings" -}}
{{- $instead := dict
  "JOTC_WORKERS" "api.workers"
  "JOTC_DRAIN_SECONDS" "api.drainSeconds"
  "JOTC_SHUTDOWN_TIMEOUT" "api.shutdownTimeoutSeconds"
  "JOTC_DB_POOLER" "database.pooler.type"
  "JOTC_READINESS_DATABASE_URL" "database.pooler.readinessDatabase"
  "JOTC_POOLER_USERNAME" "database.pooler.existingSecret"
  "JOTC_POOLER_PASSWORD" "database.pooler.existingSecret"
  "JOTC_EVALUATION_POSTGRES_PASSWORD" "evaluation.existingSecret or evaluation.postgresql.password"
  "JOTC_EVALUATION_REDIS_PASSWORD" "evaluation.existingSecret or evaluation.redis.password"
-}}
{{- range $key, $_ := .Values.api.settings | default dict -}}
{{- with get $instead $key -}}
{{- fail (printf "api.settings.%s is set by the chart itself, which would ignore this one: set %s instead" $key .) -}}
{{- end -}}
{{- end -}}
{{- /* The kubelet's probes and the Service reach the pod's own address: the API listens on every
address of the pod: 0.0.0.0 (its default), or :: on an IPv6 cluster. */ -}}
{{- $host := (.Values.api.settings | default dict).JOTC_HOST -}}
{{- if and (not (kindIs "invalid" $host)) (not (has (toString $host) (list "0.0.0.0" "::"))) -}}
{{- fail (printf "api.settings.JOTC_HOST is %q, where neither the probes nor the Service reach the API: remove it (the API listens on 0.0.0.0), or set :: on an IPv6 cluster" (toString $host)) -}}
{{- end -}}
{{- end }}

{{/* The pod securityContext of the restricted profile, of (dict "ctx" . "uid" N ["always" true]):
with podSecurity.fixedUIDs, or "always" (an image whose own user is root), user, group and fsGroup
N (the user the image's files belong to); otherwise none of the three, so that a platform assigning
UIDs (OpenShift's restricted SCC) picks them. Non-root either way. */}}
{{- define "jotc.podSecurityFor" -}}
runAsNonRoot: true
{{- if or .always .ctx.Values.podSecurity.fixedUIDs }}
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The ServiceAccount of the chart's pods: serviceAccount.name, else <fullname> when the chart
creates it, else the namespace's default. Its token is mounted in no pod. */}}
{{- define "jotc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "jotc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{/* The ServiceAccount of the migration's hook Job: hooks run before the release's own resources
exist, so when the chart creates its ServiceAccount it creates the hook's too, as a hook,
<name>-hooks; otherwise the one named above. */}}
{{- define "jotc.hookServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- printf "%s-hooks" (include "jotc.serviceAccountName" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "jotc.serviceAccountName" . -}}
{{- end -}}
{{- end }}

{{/* The URL the Locust swarm sends to (JOTC_TARGET): locust.target; else, with api.ingress on,
api.ingress.host as clients outside write it (https with api.ingress.tlsSecretName), reached through
the ingress controller's Service (jotc.locustConnectTo); else the API Service, which skips TLS and
the ingress, and whose kept-alive connections kube-proxy pins to the pods that existed then. */}}
{{- define "jotc.locustTarget" -}}
{{- if .Values.locust.target -}}{{ .Values.locust.target }}
{{- else if .Values.api.ingress.enabled -}}
{{ ternary "https" "http" (not (empty .Values.api.ingress.tlsSecretName)) }}://{{ .Values.api.ingress.host }}
{{- else -}}{{ include "jotc.apiURL" . }}
{{- end -}}
{{- end }}

{{/* host:port the Locust workers connect to in place of jotc.locustTarget's host, keeping its
Host header, TLS SNI and certificate check (JOTC_LT_CONNECT_TO): locust.ingressService, with 443
or 80 by the target's scheme when it names no port; empty when locust.target is set or api.ingress
is off (the workers connect to the target itself). */}}
{{- define "jotc.locustConnectTo" -}}
{{- if and (not .Values.locust.target) .Values.api.ingress.enabled -}}
{{- $service := .Values.locust.ingressService -}}
{{- if regexMatch ":[0-9]+$" $service -}}{{ $service }}
{{- else -}}{{ $service }}:{{ ternary "443" "80" (not (empty .Values.api.ingress.tlsSecretName)) }}
{{- end -}}
{{- end -}}
{{- end }}

{{/* JOTC_LOADTEST_TOKEN from locust.loadTestToken.existingSecret, for the API and the Locust
workers, only while the swarm is enabled: the API then counts each Locust user presenting it as
one client of its rate limit, as it counts each real user. */}}
{{- define "jotc.loadTestTokenEnv" -}}
{{- if and .Values.locust.enabled .Values.locust.loadTestToken.existingSecret }}
- name: JOTC_LOADTEST_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ .Values.locust.loadTestToken.existingSecret }}, key: token}
{{- end }}
{{- end }}

{{/* The port the Locust workers' packets reach on the pods behind what they connect to, as a
NetworkPolicy sees it (after the Service's translation): locust.ingressTargetPort when set and the
workers connect through the ingress controller's Service (jotc.locustConnectTo) or to
locust.target; else that Service's port; empty otherwise (locust.target's own port, or the API
Service's pods, are then the policy's to take). */}}
{{- define "jotc.locustPodPort" -}}
{{- $connectTo := include "jotc.locustConnectTo" . -}}
{{- if and (or $connectTo .Values.locust.target) (gt (int .Values.locust.ingressTargetPort) 0) -}}{{ int .Values.locust.ingressTargetPort }}
{{- else if $connectTo -}}{{ splitList ":" $connectTo | last }}
{{- end -}}
{{- end }}
