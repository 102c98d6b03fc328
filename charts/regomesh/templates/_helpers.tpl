{{/*
The standard labels of every object; component names the part, managedBy
what applies it when not Helm (the controller, for the waypoints it
deploys).
*/}}
{{- define "regomesh.labels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: regomesh
app.kubernetes.io/managed-by: {{ .managedBy | default .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels: immutable in a Deployment or DaemonSet, so never the version. */}}
{{- define "regomesh.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{- define "regomesh.image" -}}
{{- $g := .root.Values.global.image -}}
{{ printf "%s/%s:%s" $g.registry .name (default .root.Chart.AppVersion $g.tag) }}
{{- end }}

{{- define "regomesh.pullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The container security context of every non-root container. */}}
{{- define "regomesh.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "regomesh.workloadSocketPath" -}}
/run/spire/agent/public/{{ .Values.spire.workloadSocketName }}
{{- end }}

{{- define "regomesh.controllerIdentity" -}}
spiffe://{{ .Values.global.trustDomain }}/ns/{{ .Release.Namespace }}/sa/regomesh-controller
{{- end }}

{{- define "regomesh.controllerAddr" -}}
regomesh-controller.{{ .Release.Namespace }}.svc.{{ .Values.global.clusterDomain }}:{{ .Values.controller.xdsPort }}
{{- end }}

{{/*
The proxies' flags for the controller's bundle, which they download when
policy.opaConfig names no other bundles (docs/bundles.md): the bundle
server at controller.bundlePort, verified with policy.verificationKeySecret
when the controller signs (policy.signingKeySecret), accepted unsigned when
it does not. A key on one side only would leave every proxy unready.
*/}}
{{- define "regomesh.controllerBundleArgs" -}}
{{- if not .Values.policy.opaConfig }}
{{- if and .Values.policy.signingKeySecret (not .Values.policy.verificationKeySecret) }}
{{- fail "policy.signingKeySecret is set but policy.verificationKeySecret is not: the proxies verify the controller's signed bundles with its public key (docs/bundles.md)" }}
{{- end }}
{{- if and .Values.policy.verificationKeySecret (not .Values.policy.signingKeySecret) }}
{{- fail "policy.verificationKeySecret is set but policy.signingKeySecret is not: the controller would serve unsigned bundles, which proxies holding a key refuse; set both, or neither (docs/bundles.md)" }}
{{- end }}
- --controller-bundles=https://regomesh-controller.{{ .Release.Namespace }}.svc.{{ .Values.global.clusterDomain }}:{{ .Values.controller.bundlePort }}
{{- if not .Values.policy.signingKeySecret }}
- --controller-bundles-unsigned
{{- end }}
{{- end }}
{{- end }}
