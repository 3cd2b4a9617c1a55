{{/* ---- Names and labels ------------------------------------------------------------- */}}

{{- define "strata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name. At most 40 characters: pod names add "-broker-100"
and must stay DNS labels (63), StatefulSet names feed the controller-revision-hash label.
*/}}
{{- define "strata.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "strata.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every resource carries (with a name and instance label of its own). */}}
{{- define "strata.labels" -}}
helm.sh/chart: {{ include "strata.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: strata
{{- end -}}

{{/* Selects the Strata pods of this release (every role, not MinIO, not the test pod). */}}
{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The headless Service: it gives every pod the stable DNS name the cluster uses. */}}
{{- define "strata.headless" -}}
{{- printf "%s-headless" (include "strata.fullname" .) -}}
{{- end -}}

{{/* The DNS suffix of pod names: <pod>.<this>. */}}
{{- define "strata.podDomain" -}}
{{- printf "%s.%s.svc.%s" (include "strata.headless" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* The bootstrap address clients start from. */}}
{{- define "strata.bootstrap" -}}
{{- printf "%s.%s.svc.%s:%d" (include "strata.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.service.kafkaPort) -}}
{{- end -}}

{{- define "strata.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "strata.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "repository:tag" or "repository@digest" of an image block; tag defaults to `default`. */}}
{{- define "strata.image" -}}
{{- $img := index . 0 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (toString (default (index . 1) $img.tag)) -}}
{{- end -}}
{{- end -}}

{{/* ---- Cluster layout ------------------------------------------------------------------- */}}

{{/*
The StatefulSets, as JSON {"groups": [...]}: each with its name, component label,
--roles, replicas, first ordinal (= first node id), storage and resources.
*/}}
{{- define "strata.groups" -}}
{{- $full := include "strata.fullname" . -}}
{{- $groups := list -}}
{{- if eq .Values.mode "split" -}}
{{- $groups = append $groups (dict "name" (printf "%s-meta" $full) "component" "meta" "roles" "meta" "broker" false "meta" true "replicas" .Values.meta.replicas "start" 0 "persistence" .Values.meta.persistence "resources" .Values.meta.resources) -}}
{{- $groups = append $groups (dict "name" (printf "%s-broker" $full) "component" "broker" "roles" "broker" "broker" true "meta" false "replicas" .Values.broker.replicas "start" .Values.broker.nodeIdOffset "persistence" .Values.persistence "resources" .Values.resources) -}}
{{- else -}}
{{- $groups = append $groups (dict "name" $full "component" "node" "roles" "broker,meta" "broker" true "meta" true "replicas" .Values.replicas "start" 0 "persistence" .Values.persistence "resources" .Values.resources) -}}
{{- end -}}
{{- toJson (dict "groups" $groups) -}}
{{- end -}}

{{/* The component label of the pods that run brokers (what the bootstrap Service selects). */}}
{{- define "strata.brokerComponent" -}}
{{- ternary "broker" "node" (eq .Values.mode "split") -}}
{{- end -}}

{{- define "strata.brokerCount" -}}
{{- ternary .Values.broker.replicas .Values.replicas (eq .Values.mode "split") | int -}}
{{- end -}}

{{/* STRATA_META_VOTERS: ID@<pod>.<headless>...:9093 for every voter pod. */}}
{{- define "strata.voters" -}}
{{- $domain := include "strata.podDomain" . -}}
{{- $voters := list -}}
{{- range (include "strata.groups" . | fromJson).groups -}}
{{- if .meta -}}
{{- $g := . -}}
{{- range $i := until (int $g.replicas) -}}
{{- $id := add (int $g.start) $i -}}
{{- $voters = append $voters (printf "%d@%s-%d.%s:9093" $id $g.name $id $domain) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "," $voters -}}
{{- end -}}

{{/* ---- Object storage ------------------------------------------------------------------ */}}

{{- define "strata.bucket" -}}
{{- if .Values.objectStore.bucket -}}
{{- .Values.objectStore.bucket -}}
{{- else if .Values.minio.enabled -}}
strata
{{- end -}}
{{- end -}}

{{- define "strata.objectStoreUrl" -}}
{{- $prefix := trimAll "/" .Values.objectStore.prefix -}}
{{- if $prefix -}}
{{- printf "s3://%s/%s" (include "strata.bucket" .) $prefix -}}
{{- else -}}
{{- printf "s3://%s" (include "strata.bucket" .) -}}
{{- end -}}
{{- end -}}

{{- define "strata.minio.fullname" -}}
{{- printf "%s-minio" (include "strata.fullname" .) -}}
{{- end -}}

{{- define "strata.minio.secretName" -}}
{{- default (include "strata.minio.fullname" .) .Values.minio.existingSecret -}}
{{- end -}}

{{/* The S3 endpoint the brokers use: the in-chart MinIO's, or objectStore.endpoint. */}}
{{- define "strata.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s.%s.svc.%s:9000" (include "strata.minio.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- .Values.objectStore.endpoint -}}
{{- end -}}
{{- end -}}

{{/* ---- Node config file ---------------------------------------------------------------- */}}

{{/*
Whether pods get the node-config init container: it writes the per-pod TOML file
(rack from the node's zone; the NodePort advertised listener).
*/}}
{{- define "strata.nodeConfig" -}}
{{- if or .Values.rack.enabled (and .Values.external.enabled (eq .Values.external.type "NodePort")) -}}
true
{{- end -}}
{{- end -}}

{{/* The file STRATA_CONFIG names, if any. */}}
{{- define "strata.configPath" -}}
{{- if include "strata.nodeConfig" . -}}
/etc/strata/node/strata.toml
{{- else if .Values.configFile -}}
/etc/strata/user/strata.toml
{{- end -}}
{{- end -}}

{{/* ---- Checks that JSON Schema cannot express ------------------------------------------- */}}

{{- define "strata.validate" -}}
{{- $brokers := include "strata.brokerCount" . | int -}}
{{- $rf := index .Values.kafkaConfig "default.replication.factor" | default 1 | int -}}
{{- if gt $rf $brokers -}}
{{- fail (printf "kafkaConfig: default.replication.factor is %d but the cluster has %d broker(s): lower it (--set 'kafkaConfig.default\\.replication\\.factor=%d') or add brokers" $rf $brokers $brokers) -}}
{{- end -}}
{{- $isr := index .Values.kafkaConfig "min.insync.replicas" | default 1 | int -}}
{{- if gt $isr $rf -}}
{{- fail (printf "kafkaConfig: min.insync.replicas (%d) is larger than default.replication.factor (%d): acks=all produce to new topics would always fail" $isr $rf) -}}
{{- end -}}
{{- if and (eq .Values.mode "split") (lt (int .Values.broker.nodeIdOffset) (int .Values.meta.replicas)) -}}
{{- fail (printf "broker.nodeIdOffset (%d) must be at least meta.replicas (%d): the voters have node ids 0..%d" (int .Values.broker.nodeIdOffset) (int .Values.meta.replicas) (sub (int .Values.meta.replicas) 1)) -}}
{{- end -}}
{{- if not (include "strata.bucket" .) -}}
{{- fail "objectStore.bucket is required: the brokers need an S3 bucket (or S3-compatible store) they all share; or set minio.enabled=true to try Strata with an in-chart MinIO" -}}
{{- end -}}
{{- if .Values.minio.enabled -}}
{{- if or .Values.objectStore.endpoint .Values.objectStore.existingSecret .Values.objectStore.irsaRoleArn -}}
{{- fail "minio.enabled is true, so the brokers use the in-chart MinIO: unset objectStore.endpoint, objectStore.existingSecret and objectStore.irsaRoleArn, or set minio.enabled=false to use your own store" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.objectStore.existingSecret .Values.objectStore.irsaRoleArn -}}
{{- fail "objectStore: set either irsaRoleArn (IRSA) or existingSecret (static keys), not both: static keys would take precedence over the role" -}}
{{- end -}}
{{- if and .Values.external.enabled (eq .Values.external.type "LoadBalancer") (not .Values.external.domain) -}}
{{- fail "external.domain is required with external.type=LoadBalancer: broker <pod> is advertised as <pod>.<external.domain>" -}}
{{- end -}}
{{- $sec := .Values.security -}}
{{- if and (has $sec.protocol (list "SSL" "SASL_SSL")) (not $sec.tlsSecret) -}}
{{- fail (printf "security.protocol=%s needs security.tlsSecret: a kubernetes.io/tls Secret (tls.key, tls.crt) for the brokers" $sec.protocol) -}}
{{- end -}}
{{- if and (ne $sec.clientAuth "none") (not $sec.truststoreSecret) -}}
{{- fail "security.clientAuth needs security.truststoreSecret: a Secret whose ca.crt client certificates are checked against" -}}
{{- end -}}
{{- if and (ne $sec.protocol "PLAINTEXT") .Values.external.enabled (eq .Values.external.type "NodePort") -}}
{{- fail "security.protocol other than PLAINTEXT does not work with external.type=NodePort yet: use external.type=LoadBalancer" -}}
{{- end -}}
{{- if and (ne $sec.protocol "PLAINTEXT") (has (int $sec.internalPort) (list 9092 9093 9644)) -}}
{{- fail (printf "security.internalPort %d is taken (9092 Kafka, 9093 metadata, 9644 HTTP)" (int $sec.internalPort)) -}}
{{- end -}}
{{- if and .Values.rack.enabled .Values.configFile (regexMatch "(?m)^\\s*rack\\s*=" .Values.configFile) -}}
{{- fail "configFile sets rack, and rack.enabled writes it from the node's zone: remove one" -}}
{{- end -}}
{{- end -}}

{{/*
A value as an environment variable's text. Helm reads numbers from values files as
floats, and 604800000 would print as 6.048e+08: whole numbers print as integers.
*/}}
{{- define "strata.envValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Labels of this release's Strata resources that are not selected as pods. */}}
{{- define "strata.resourceLabels" -}}
{{ include "strata.labels" . }}
{{ include "strata.selectorLabels" . }}
{{- end -}}
