{{/* The project image (values: image.repository, image.tag). */}}
{{- define "hpc-offload.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* The webhook's config.yaml (webhook/config.py): the values' config with the image and
the connector's resources; the ConfigMap's name carries its hash, so a change rolls the
webhook (as kustomize's configMapGenerator does). */}}
{{- define "hpc-offload.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "connector_image" (include "hpc-offload.image" .) -}}
{{- $_ := set $config "image_pull_policy" .Values.image.pullPolicy -}}
{{- $_ := set $config "connector_resources" .Values.connector.resources -}}
{{- tpl (toYaml $config) . -}}
{{- end }}
