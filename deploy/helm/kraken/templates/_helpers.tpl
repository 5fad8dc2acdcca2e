{{/* Name of the release's objects: <release>-kraken, or the release name if it says kraken. */}}
{{- define "kraken.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kraken.labels" -}}
app.kubernetes.io/name: kraken
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include "kraken.selector" (list . "origin") */}}
{{- define "kraken.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: kraken
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kraken.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* <service>.<namespace>.svc.<domain> of one component's Service. */}}
{{- define "kraken.dns" -}}
{{- $ := index . 0 -}}
{{- printf "%s-%s.%s.svc.%s" (include "kraken.fullname" $) (index . 1) $.Release.Namespace $.Values.clusterDomain -}}
{{- end -}}

{{- define "kraken.serverName" -}}
{{- .Values.tls.serverName | default (printf "%s.%s.svc" (include "kraken.fullname" .) .Release.Namespace) -}}
{{- end -}}

{{- define "kraken.redisAddress" -}}
{{- if .Values.redis.address -}}
{{- .Values.redis.address -}}
{{- else if .Values.redis.bundled.enabled -}}
{{- printf "%s:6379" (include "kraken.dns" (list . "redis")) -}}
{{- else -}}
{{- fail "redis.address is required when redis.bundled.enabled is false" -}}
{{- end -}}
{{- end -}}

{{/* The tls: section; "serve" (list . true) for daemons that serve TLS, false for the agent. */}}
{{- define "kraken.tlsConfig" -}}
{{- $ := index . 0 -}}
{{- if $.Values.tls.enabled -}}
ca: /etc/kraken/tls/ca.crt
client_cert: /etc/kraken/tls/tls.crt
client_key: /etc/kraken/tls/tls.key
server_name: {{ include "kraken.serverName" $ }}
{{- if index . 1 }}
cert: /etc/kraken/tls/tls.crt
key: /etc/kraken/tls/tls.key
{{- end }}
{{- end -}}
{{- end -}}

{{/*
The daemons' configuration files: the chart's settings with <component>.config merged over
them. @POD_IP@ and @NODE_IP@ are replaced by the pod's init container.
*/}}
{{- define "kraken.config.origin" -}}
{{- $c := dict
  "data_dir" "/var/lib/kraken/origin"
  "server" (dict "listen" "tcp:15002" "advertise" "@POD_IP@:15002")
  "peer" (dict "listen" "tcp:15001" "advertise" "@POD_IP@:15001")
  "cluster" (dict "dns" (printf "%s:15002" (include "kraken.dns" (list . "origin"))))
  "backends" .Values.backends.origin
  "tls" (include "kraken.tlsConfig" (list . true) | fromYaml)
-}}
{{- toYaml (mustMergeOverwrite $c (deepCopy .Values.origin.config)) -}}
{{- end -}}

{{- define "kraken.config.tracker" -}}
{{- $redis := dict "address" (include "kraken.redisAddress" .) "database" .Values.redis.database -}}
{{- if .Values.redis.passwordSecret.name -}}
{{- $_ := set $redis "password_file" "/etc/kraken/redis/password" -}}
{{- end -}}
{{- $c := dict
  "data_dir" "/var/lib/kraken/tracker"
  "server" (dict "listen" "tcp:15003")
  "peer_store" (dict "kind" "redis" "redis" $redis)
  "origin" (dict "hosts" (dict "dns" (printf "%s:15002" (include "kraken.dns" (list . "origin")))))
  "tls" (include "kraken.tlsConfig" (list . true) | fromYaml)
-}}
{{- toYaml (mustMergeOverwrite $c (deepCopy .Values.tracker.config)) -}}
{{- end -}}

{{- define "kraken.config.build-index" -}}
{{- $c := dict
  "data_dir" "/var/lib/kraken/build-index"
  "server" (dict "listen" "tcp:15004" "advertise" "@POD_IP@:15004")
  "cluster" (dict "hosts" (dict "dns" (printf "%s:15004" (include "kraken.dns" (list . "build-index")))))
  "origin" (dict "hosts" (dict "dns" (printf "%s:15002" (include "kraken.dns" (list . "origin")))))
  "backends" .Values.backends.buildIndex
  "duplicates" (dict "trusted_networks" .Values.buildIndex.duplicatesFrom)
  "tls" (include "kraken.tlsConfig" (list . true) | fromYaml)
-}}
{{- toYaml (mustMergeOverwrite $c (deepCopy .Values.buildIndex.config)) -}}
{{- end -}}

{{- define "kraken.config.proxy" -}}
{{- $c := dict
  "data_dir" "/var/lib/kraken/proxy"
  "server" (dict "listen" "tcp:15000")
  "origin" (dict "hosts" (dict "dns" (printf "%s:15002" (include "kraken.dns" (list . "origin")))))
  "build_index" (dict "hosts" (dict "dns" (printf "%s:15004" (include "kraken.dns" (list . "build-index")))))
  "tls" (include "kraken.tlsConfig" (list . true) | fromYaml)
-}}
{{- toYaml (mustMergeOverwrite $c (deepCopy .Values.proxy.config)) -}}
{{- end -}}

{{- define "kraken.config.agent" -}}
{{- $c := dict
  "data_dir" "/var/lib/kraken/agent"
  "registry" (dict "listen" "tcp:16000:interface=127.0.0.1")
  "server" (dict "listen" "tcp:16002")
  "peer" (dict "listen" "tcp:16001" "advertise" "@NODE_IP@:16001")
  "tracker" (dict "hosts" (dict "dns" (printf "%s:15003" (include "kraken.dns" (list . "tracker")))))
  "build_index" (dict "hosts" (dict "dns" (printf "%s:15004" (include "kraken.dns" (list . "build-index")))))
  "tls" (include "kraken.tlsConfig" (list . false) | fromYaml)
-}}
{{- toYaml (mustMergeOverwrite $c (deepCopy .Values.agent.config)) -}}
{{- end -}}

{{/*
Init container writing /etc/kraken/<daemon>.yaml from the ConfigMap with the pod's addresses
filled in, then checking it (TLS files included) as the daemon will: include
"kraken.configInit" (list . "origin")
*/}}
{{- define "kraken.configInit" -}}
{{- $ := index . 0 -}}
{{- $daemon := index . 1 -}}
- name: config
  image: {{ include "kraken.image" $ }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  command:
    - sh
    - -ec
    - |
      ip() { case "$1" in *:*) echo "[$1]" ;; *) echo "$1" ;; esac; }
      sed -e "s/@POD_IP@/$(ip "$POD_IP")/g" -e "s/@NODE_IP@/$(ip "$NODE_IP")/g" \
        /etc/kraken-template/{{ $daemon }}.yaml > /etc/kraken/{{ $daemon }}.yaml
      kraken config check --files /etc/kraken/{{ $daemon }}.yaml --daemon {{ $daemon }}
  env:
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: NODE_IP
      valueFrom: {fieldRef: {fieldPath: status.hostIP}}
  securityContext:
    {{- toYaml $.Values.securityContext | nindent 4 }}
  volumeMounts:
    - {name: config-template, mountPath: /etc/kraken-template}
    - {name: config, mountPath: /etc/kraken}
    {{- if $.Values.tls.enabled }}
    - {name: tls, mountPath: /etc/kraken/tls, readOnly: true}
    {{- end }}
{{- end -}}

{{/* The daemon's container: include "kraken.daemon" (list . "origin" portsYaml resources) */}}
{{- define "kraken.daemon" -}}
{{- $ := index . 0 -}}
{{- $daemon := index . 1 -}}
- name: {{ $daemon }}
  image: {{ include "kraken.image" $ }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  args: [kraken-{{ $daemon }}, --config, /etc/kraken/{{ $daemon }}.yaml]
  {{- if has $daemon (list "origin" "build-index") }}
  {{- include "kraken.s3Env" $ | nindent 2 }}
  {{- end }}
  ports:
    {{- index . 2 | nindent 4 }}
  livenessProbe:
    httpGet: {path: /health, port: http{{ if index . 4 }}, host: {{ index . 4 }}{{ end }}}
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 6
  readinessProbe:
    httpGet: {path: /readiness, port: http{{ if index . 4 }}, host: {{ index . 4 }}{{ end }}}
    periodSeconds: 5
    timeoutSeconds: 5
  startupProbe:
    httpGet: {path: /health, port: http{{ if index . 4 }}, host: {{ index . 4 }}{{ end }}}
    periodSeconds: 2
    failureThreshold: 60
  resources:
    {{- toYaml (index . 3) | nindent 4 }}
  securityContext:
    {{- toYaml $.Values.securityContext | nindent 4 }}
  volumeMounts:
    - {name: config, mountPath: /etc/kraken}
    - {name: data, mountPath: /var/lib/kraken}
    - {name: tmp, mountPath: /tmp}
    {{- if $.Values.tls.enabled }}
    - {name: tls, mountPath: /etc/kraken/tls, readOnly: true}
    {{- end }}
    {{- if and (eq $daemon "tracker") $.Values.redis.passwordSecret.name }}
    - {name: redis-password, mountPath: /etc/kraken/redis, readOnly: true}
    {{- end }}
{{- end -}}

{{/* Volumes every daemon pod has (config template, config, tmp, tls). */}}
{{- define "kraken.volumes" -}}
- name: config-template
  configMap: {name: {{ include "kraken.fullname" . }}-config}
- name: config
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if .Values.tls.enabled }}
- name: tls
  secret: {secretName: {{ .Values.tls.secretName }}}
{{- end }}
{{- end -}}

{{- define "kraken.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{- define "kraken.s3Env" -}}
{{- if .Values.s3Credentials.secretName }}
envFrom:
  - secretRef: {name: {{ .Values.s3Credentials.secretName }}}
{{- end }}
{{- end -}}
