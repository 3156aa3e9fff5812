{{/* Names: <release>-radlight, unless the release is already called radlight. */}}
{{- define "radlight.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "radlight.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "radlight.labels" -}}
{{ include "radlight.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels of one component (dicom-node, dispatcher, worker-inference, ...): include with
     (dict "root" $ "component" "api"). */}}
{{- define "radlight.componentSelector" -}}
{{ include "radlight.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "radlight.componentLabels" -}}
{{ include "radlight.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "radlight.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "radlight.fullname" .)) -}}
{{- end -}}

{{- define "radlight.claimName" -}}
{{- .Values.storage.existingClaim | default (printf "%s-store" (include "radlight.fullname" .)) -}}
{{- end -}}

{{- define "radlight.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "radlight.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The image; (dict "root" $ "gpu" true) gives the GPU flavour. */}}
{{- define "radlight.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .gpu -}}
{{- $tag = printf "%s%s" $tag .root.Values.image.gpuTagSuffix -}}
{{- end -}}
{{- printf "%s:%s" .root.Values.image.repository $tag -}}
{{- end -}}

{{/* Settings every process reads: secrets by reference, the rest as values. */}}
{{- define "radlight.env" -}}
- name: RADLIGHT_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "radlight.secretName" . }}
      key: secret-key
- name: RADLIGHT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "radlight.secretName" . }}
      key: database-url
- name: RADLIGHT_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "radlight.secretName" . }}
      key: broker-url
- name: RADLIGHT_DATA_DIR
  value: /data
- name: RADLIGHT_AE_TITLE
  value: {{ .Values.settings.aeTitle | quote }}
- name: RADLIGHT_ALLOWED_CALLING_AES
  value: {{ join "," .Values.settings.allowedCallingAEs | quote }}
- name: RADLIGHT_STUDY_QUIET_SECONDS
  value: {{ .Values.settings.studyQuietSeconds | quote }}
- name: RADLIGHT_REQUEUE_AFTER_S
  value: {{ .Values.settings.requeueAfterS | quote }}
- name: RADLIGHT_LOG_LEVEL
  value: {{ .Values.settings.logLevel | quote }}
- name: RADLIGHT_LOG_JSON
  value: "true"
- name: RADLIGHT_API_HOST
  value: "0.0.0.0"
{{- range $name, $value := .Values.settings.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* Pod-level fields shared by every RadLight pod; (dict "root" $ "spec" .Values.api). */}}
{{- define "radlight.podCommon" -}}
serviceAccountName: {{ include "radlight.serviceAccountName" .root }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The shared store at /data and a writable /tmp (the root file system is read-only). */}}
{{- define "radlight.volumes" -}}
- name: store
  persistentVolumeClaim:
    claimName: {{ include "radlight.claimName" . }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "radlight.volumeMounts" -}}
- name: store
  mountPath: /data
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* The health check script of the image, for exec probes: (list "dispatcher" "--heartbeat" ...). */}}
{{- define "radlight.healthcheck" -}}
exec:
  command:
    - python
    - /opt/radlight/healthcheck.py
    - radlight
    {{- range . }}
    - {{ . | quote }}
    {{- end }}
{{- end -}}
