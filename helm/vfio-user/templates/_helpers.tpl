{{/* The image of every container: repository:tag, tag defaulting to the appVersion. */}}
{{- define "vfio-user.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Labels of every object (besides app.kubernetes.io/name, which each object sets). */}}
{{- define "vfio-user.labels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: vfio-user
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* Labels of pod templates: stable across chart versions. */}}
{{- define "vfio-user.podLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: vfio-user
{{- end }}
