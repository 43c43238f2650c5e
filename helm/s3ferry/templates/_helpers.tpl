{{/*
Names and labels shared by every object of the release.
*/}}
{{- define "s3ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "s3ferry.fullname" -}}
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

{{- define "s3ferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "s3ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "s3ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "s3ferry.labels" -}}
helm.sh/chart: {{ include "s3ferry.chart" . }}
{{ include "s3ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "s3ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "s3ferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "s3ferry.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "s3ferry.configMapName" -}}
{{- default (include "s3ferry.fullname" .) .Values.config.existingConfigMap }}
{{- end }}

{{/*
Pod annotations: config checksum (a TOML change rolls the pods) and Prometheus discovery.
*/}}
{{- define "s3ferry.podAnnotations" -}}
checksum/config: {{ .Values.config.endpointsToml | sha256sum }}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
Environment common to every s3ferry process. Keys for other partitions come only from
Secrets (secretKeyRef), never from values.
*/}}
{{- define "s3ferry.env" -}}
- name: S3FERRY_CONFIG
  value: /etc/s3ferry/s3ferry.toml
- name: S3FERRY_QUEUE_URL
  value: {{ required "queue.url is required (the SQS job queue URL)" .Values.queue.url | quote }}
{{- with .Values.queue.dlqUrl }}
- name: S3FERRY_DLQ_URL
  value: {{ . | quote }}
{{- end }}
- name: S3FERRY_QUEUE_ENDPOINT
  value: {{ .Values.queue.endpoint | quote }}
- name: S3FERRY_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
- name: S3FERRY_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: S3FERRY_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- range $cred := .Values.partitionCredentials }}
{{- $secret := required "partitionCredentials[].secretName is required" $cred.secretName }}
- name: {{ printf "%sAWS_ACCESS_KEY_ID" $cred.envPrefix }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ default "AWS_ACCESS_KEY_ID" $cred.accessKeyIdKey }}
      optional: false
- name: {{ printf "%sAWS_SECRET_ACCESS_KEY" $cred.envPrefix }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ default "AWS_SECRET_ACCESS_KEY" $cred.secretAccessKeyKey }}
      optional: false
{{- if $cred.sessionTokenKey }}
- name: {{ printf "%sAWS_SESSION_TOKEN" $cred.envPrefix }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $cred.sessionTokenKey }}
      optional: false
{{- end }}
{{- end }}
{{- end }}

{{/*
Worker-only settings (S3FERRY_WORKER__*). drainSeconds must stay below the pod's
terminationGracePeriodSeconds: the worker finishes or releases its messages, then exits 0.
*/}}
{{- define "s3ferry.workerEnv" -}}
- name: S3FERRY_WORKER__MAX_JOBS
  value: {{ .Values.worker.maxJobs | quote }}
- name: S3FERRY_WORKER__MAX_PARTS
  value: {{ .Values.worker.maxParts | quote }}
- name: S3FERRY_WORKER__PART_SIZE
  value: {{ .Values.worker.partSize | int64 | quote }}
- name: S3FERRY_WORKER__SERVER_COPY_BUDGET
  value: {{ .Values.worker.serverCopyBudget | int64 | quote }}
- name: S3FERRY_WORKER__VISIBILITY_TIMEOUT
  value: {{ .Values.worker.visibilityTimeout | quote }}
- name: S3FERRY_WORKER__DRAIN_SECONDS
  value: {{ .Values.worker.drainSeconds | quote }}
{{- end }}

{{/*
Intake-only settings: listen on every address of the pod, and the bearer token from its
Secret (never from values).
*/}}
{{- define "s3ferry.intakeEnv" -}}
- name: S3FERRY_DISPATCHER__INTAKE_HOST
  value: "0.0.0.0"
- name: S3FERRY_DISPATCHER__INTAKE_PORT
  value: {{ .Values.intake.port | quote }}
- name: S3FERRY_DISPATCHER__INTAKE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.intake.tokenFrom.secretName }}
      key: {{ default "token" .Values.intake.tokenFrom.key }}
      optional: false
{{- end }}

{{/*
The pod template every Deployment uses. Called with
(dict "root" $ "component" "worker" "cfg" .Values.worker).
*/}}
{{- define "s3ferry.podTemplate" -}}
{{- $root := .root -}}
{{- $cfg := .cfg -}}
metadata:
  labels:
    {{- include "s3ferry.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $cfg.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "s3ferry.podAnnotations" $root | nindent 4 }}
    {{- with $cfg.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "s3ferry.serviceAccountName" $root }}
  # s3ferry never calls the Kubernetes API. IRSA and EKS Pod Identity inject their own
  # projected token, independent of this setting.
  automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
  {{- if eq .component "worker" }}
  {{- if le (int $cfg.terminationGracePeriodSeconds) (int (ceil $cfg.drainSeconds)) }}
  {{- fail "worker.terminationGracePeriodSeconds must be larger than worker.drainSeconds" }}
  {{- end }}
  {{- end }}
  terminationGracePeriodSeconds: {{ $cfg.terminationGracePeriodSeconds }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: s3ferry
      image: {{ include "s3ferry.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        {{- toYaml $cfg.args | nindent 8 }}
      env:
        {{- include "s3ferry.env" $root | nindent 8 }}
        {{- if eq .component "worker" }}
        {{- include "s3ferry.workerEnv" $root | nindent 8 }}
        {{- end }}
        {{- if eq .component "intake" }}
        {{- include "s3ferry.intakeEnv" $root | nindent 8 }}
        {{- end }}
        {{- with $cfg.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ $root.Values.metrics.port }}
          protocol: TCP
        {{- if eq .component "intake" }}
        - name: intake
          containerPort: {{ $root.Values.intake.port }}
          protocol: TCP
        {{- end }}
      {{- with $cfg.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $cfg.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $cfg.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/s3ferry
          readOnly: true
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ include "s3ferry.configMapName" $root }}
        items:
          - key: s3ferry.toml
            path: s3ferry.toml
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
  {{- with $cfg.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
