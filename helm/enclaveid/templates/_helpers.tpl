{{/*
Names, labels, mode resolution, image references (with the digest guard) and the hardened
container security context. Every template goes through these, so a guard here holds for all.
*/}}

{{- define "enclaveid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "enclaveid.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Selects the workload's pods only (the helm test pod has component: test). */}}
{{- define "enclaveid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "enclaveid.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: workload
{{- end -}}

{{- define "enclaveid.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "enclaveid.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: enclaveid
enclaveid.io/deployment: {{ .Values.deployment }}
{{- end -}}

{{- define "enclaveid.labels" -}}
{{ include "enclaveid.commonLabels" . }}
app.kubernetes.io/component: workload
{{- end -}}

{{- define "enclaveid.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "enclaveid.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" or "false": confidentiality.enabled, or what the mode implies when it is null. */}}
{{- define "enclaveid.confidential" -}}
{{- if kindIs "bool" .Values.confidentiality.enabled -}}
{{- .Values.confidentiality.enabled -}}
{{- else -}}
{{- ne .Values.deployment "microk8s" -}}
{{- end -}}
{{- end -}}

{{/* "true" when every image must be pinned by digest: aks, kata-cc, or confidentiality on. */}}
{{- define "enclaveid.requireDigests" -}}
{{- or (ne .Values.deployment "microk8s") (eq (include "enclaveid.confidential" .) "true") -}}
{{- end -}}

{{- define "enclaveid.workloadIdentity" -}}
{{- if kindIs "bool" .Values.workloadIdentity.enabled -}}
{{- .Values.workloadIdentity.enabled -}}
{{- else -}}
{{- eq (include "enclaveid.confidential" .) "true" -}}
{{- end -}}
{{- end -}}

{{- define "enclaveid.provider" -}}
{{- $p := .Values.attest.provider -}}
{{- if not $p -}}
{{- $p = get (dict "microk8s" "simulated" "aks" "vtpm" "kata-cc" "sev-guest") .Values.deployment -}}
{{- end -}}
{{- if and (eq $p "simulated") (eq (include "enclaveid.confidential" .) "true") -}}
{{- fail "attest.provider = \"simulated\": refused while confidentiality is on (it signs with a test chain); use vtpm (aks) or sev-guest (kata-cc)" -}}
{{- end -}}
{{- $p -}}
{{- end -}}

{{- define "enclaveid.vaultUrl" -}}
{{- $url := .Values.vault.url -}}
{{- $confidential := eq (include "enclaveid.confidential" .) "true" -}}
{{- if not $url -}}
{{- if $confidential -}}
{{- fail (printf "vault.url is required in %s mode: akv:https://NAME.vault.azure.net" .Values.deployment) -}}
{{- end -}}
{{- $url = printf "dir:%s" .Values.vault.dev.mountPath -}}
{{- end -}}
{{- if and $confidential (not (hasPrefix "akv:" $url)) -}}
{{- fail (printf "vault.url = %q: confidentiality is on, so the master secret must come from AKV through SKR (akv:https://NAME.vault.azure.net)" $url) -}}
{{- end -}}
{{- if not (or (hasPrefix "akv:https://" $url) (hasPrefix "dir:/" $url)) -}}
{{- fail (printf "vault.url = %q: must be akv:https://NAME.vault.azure.net or dir:/ABSOLUTE/PATH" $url) -}}
{{- end -}}
{{- $url -}}
{{- end -}}

{{- define "enclaveid.devVault" -}}
{{- hasPrefix "dir:" (include "enclaveid.vaultUrl" .) -}}
{{- end -}}

{{/*
"true" for AKV without Secure Key Release: an akv: vault with confidentiality off (microk8s, or
a dry run of another mode on a plain pool). There is no TEE to release the secret into, so the
init commands get --no-skr and keep the master secret as a plain AKV secret, readable by
anyone with secret-get permission on the vault. It never mixes with SKR: vault.maaEndpoint and
vault.releasePolicy are refused here rather than silently dropped.
*/}}
{{- define "enclaveid.noSkr" -}}
{{- $akv := hasPrefix "akv:" (include "enclaveid.vaultUrl" .) -}}
{{- $confidential := eq (include "enclaveid.confidential" .) "true" -}}
{{- $noSkr := and $akv (not $confidential) -}}
{{- if and $noSkr .Values.vault.maaEndpoint -}}
{{- fail (printf "vault.maaEndpoint = %q: confidentiality is off, so an akv: vault runs without secure key release (init --no-skr, the master secret a plain AKV secret); unset vault.maaEndpoint, or turn confidentiality on for SKR" .Values.vault.maaEndpoint) -}}
{{- end -}}
{{- if and $noSkr .Values.vault.releasePolicy -}}
{{- fail "vault.releasePolicy is set but confidentiality is off, so an akv: vault runs without secure key release (init --no-skr) and no key is created; unset vault.releasePolicy, or turn confidentiality on for SKR" -}}
{{- end -}}
{{- $noSkr -}}
{{- end -}}

{{/*
An image reference from {repository, tag, digest}. Args: dict "root" $ "image" <map> "field" "images.x".
The digest wins over the tag. Outside microk8s (or with confidentiality on) a digest is required.
*/}}
{{- define "enclaveid.image" -}}
{{- $img := .image -}}
{{- $field := .field -}}
{{- if $img.digest -}}
{{- if not (regexMatch "^sha256:[a-f0-9]{64}$" $img.digest) -}}
{{- fail (printf "%s.digest = %q: not a digest (want sha256:<64 lowercase hex>)" $field $img.digest) -}}
{{- end -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else if eq (include "enclaveid.requireDigests" .root) "true" -}}
{{- fail (printf "%s.digest is required in %s mode (confidentiality on): every image must be pinned by digest, e.g. pass helm/images.yaml (make helm-chart) or --set %s.digest=sha256:..." $field .root.Values.deployment $field) -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (required (printf "%s.tag or %s.digest is required" $field $field) $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* An app image given as one string; outside microk8s it must end in @sha256:<64 hex>. */}}
{{- define "enclaveid.appImage" -}}
{{- $ref := .image -}}
{{- if and (eq (include "enclaveid.requireDigests" .root) "true") (not (regexMatch "@sha256:[a-f0-9]{64}$" $ref)) -}}
{{- fail (printf "%s = %q: must be pinned by digest (NAME@sha256:<64 hex>) in %s mode" .field $ref .root.Values.deployment) -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* The hardened security context every container gets. */}}
{{- define "enclaveid.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The workload's identity: SPIFFE URI and DNS names (shared with init and renew). */}}
{{- define "enclaveid.spiffeId" -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .Values.trustDomain .Release.Namespace (include "enclaveid.serviceAccountName" .) -}}
{{- end -}}

{{- define "enclaveid.identityArgs" -}}
{{- $svc := include "enclaveid.fullname" . -}}
- --uri
- {{ include "enclaveid.spiffeId" . | quote }}
- --dns
- {{ printf "%s.%s.svc.%s" $svc .Release.Namespace .Values.trustDomain | quote }}
- --dns
- {{ printf "%s.%s.svc" $svc .Release.Namespace | quote }}
{{- range .Values.init.extraDnsNames }}
- --dns
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Environment shared by our containers. */}}
{{- define "enclaveid.commonEnv" -}}
- name: LOG_FORMAT
  value: {{ .Values.proxy.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.proxy.logLevel | quote }}
{{- end -}}

{{/*
Arguments that select the vault, for every init command (secrets, proxy, renew). Each of them
releases the master secret (secrets to derive the CA key and check or make the CA certificate,
proxy and renew to issue the leaf), so with confidentiality on each gets `--evidence` and the
provider's flags; MAA is also the release policy's authority. The device: evidenceResources
(aks) and evidenceMounts (kata-cc). With an akv: vault and confidentiality off, each gets
`--no-skr` instead (enclaveid.noSkr) and none of the SKR flags.
*/}}
{{- define "enclaveid.vaultArgs" -}}
{{- $root := . -}}
- --vault
- {{ include "enclaveid.vaultUrl" $root | quote }}
{{- if eq (include "enclaveid.noSkr" $root) "true" }}
- --no-skr
- --master-secret-name
- {{ $root.Values.vault.noSkrSecretName | quote }}
{{- else if hasPrefix "akv:" (include "enclaveid.vaultUrl" $root) }}
- --key-name
- {{ $root.Values.vault.keyName | quote }}
{{- $confidential := eq (include "enclaveid.confidential" $root) "true" }}
{{- if and $confidential (not $root.Values.vault.maaEndpoint) }}
{{- fail (printf "vault.maaEndpoint is required in %s mode (confidentiality on): SKR needs an MAA token, and the key's release policy names MAA as its authority, e.g. https://sharedeus.eus.attest.azure.net" $root.Values.deployment) }}
{{- end }}
{{- if $root.Values.vault.maaEndpoint }}
- --maa
- {{ $root.Values.vault.maaEndpoint | quote }}
{{- end }}
{{- if $confidential }}
{{- $provider := include "enclaveid.provider" $root }}
- --evidence
- {{ $provider | quote }}
{{- if eq $provider "vtpm" }}
{{- /* AKS CVM: MAA attest/AzureGuest with a TPM transfer key (the device: enclaveid.evidenceResources). */}}
- --tcti
- {{ $root.Values.aks.vtpm.tcti | quote }}
- --vcek
- {{ $root.Values.aks.vtpm.vcek | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Device access for the containers that release the secret or produce SNP evidence
(init-secrets, init-proxy, renew, attest). */}}
{{- define "enclaveid.evidenceResources" -}}
{{- $res := deepCopy (default dict .resources) -}}
{{- if eq .root.Values.deployment "aks" -}}
{{- $limits := default dict $res.limits -}}
{{- $_ := set $limits .root.Values.aks.vtpm.resourceName "1" -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{- define "enclaveid.evidenceMounts" -}}
{{- if eq .Values.deployment "kata-cc" }}
- name: sev-guest
  mountPath: {{ .Values.kataCC.sevGuestDevice }}
{{- end }}
{{- end -}}


{{/*
Where the admin listeners (proxy 15000, attest 15010) bind: 127.0.0.1 unless metrics.expose
opts in to scraping on the pod IP. They serve /config and POST /shutdown (proxy) besides
/metrics, so they are not for other pods; the kubelet probes them with exec probes instead.
*/}}
{{- define "enclaveid.adminHost" -}}
{{- if .Values.metrics.expose -}}
{{- if and .Values.networkPolicy.enabled (not .Values.metrics.from) -}}
{{- fail "metrics.from is required when metrics.expose is true and networkPolicy.enabled: list the Prometheus peers (NetworkPolicyPeer), e.g. [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]; [{namespaceSelector: {}}] admits every namespace to the admin ports" -}}
{{- end -}}
0.0.0.0
{{- else -}}
127.0.0.1
{{- end -}}
{{- end -}}

{{/*
An exec probe: the container's own binary GETs its loopback admin listener (exit 0 on 2xx).
The binary gives up 200 ms before the kubelet does, so its own reason reaches the pod events.
Args: dict "root" $ "binary" "/usr/local/bin/enclaveid-proxy" "port" 15000 "path" "/ready".
*/}}
{{- define "enclaveid.execProbe" -}}
{{- $timeout := int .root.Values.probes.timeoutSeconds -}}
exec:
  command:
    - {{ .binary }}
    - probe
    - --url
    - {{ printf "http://127.0.0.1:%d%s" (int .port) .path }}
    - --timeout-ms
    - {{ sub (mul $timeout 1000) 200 | quote }}
timeoutSeconds: {{ $timeout }}
{{- end -}}

{{/* The proxy config (issue 2's contract) as a dict, rendered to YAML by the ConfigMaps. */}}
{{- define "enclaveid.proxyConfig" -}}
{{- $cfg := dict "admin" (dict "listen" (printf "%s:%d" (include "enclaveid.adminHost" .) (int .Values.proxy.adminPort))) -}}
{{- $_ := set $cfg "tls" (dict "ca" "/run/enclaveid/tls/ca.pem" "cert" "/run/enclaveid/tls/cert.pem" "key" "/run/enclaveid/tls/key.pem") -}}
{{- if .Values.proxy.defaults -}}
{{- $_ := set $cfg "defaults" .Values.proxy.defaults -}}
{{- end -}}
{{- $_ := set $cfg "drain_timeout_ms" (int .Values.proxy.drainTimeoutMs) -}}
{{- if .Values.proxy.dns -}}
{{- $_ := set $cfg "dns" .Values.proxy.dns -}}
{{- end -}}
{{- $inbound := list -}}
{{- range $i, $l := .Values.proxy.inbound -}}
{{- if not (regexMatch "^(127\\.[0-9]+\\.[0-9]+\\.[0-9]+|\\[::1\\]|localhost):[0-9]+$" $l.forward) -}}
{{- fail (printf "proxy.inbound[%d].forward = %q: must be a loopback address (127.0.0.1:PORT): the app is reached only through the proxy" $i $l.forward) -}}
{{- end -}}
{{- $entry := dict "name" $l.name "listen" (printf "0.0.0.0:%d" (int $l.port)) "forward" $l.forward "protocol" (default "tcp" $l.protocol) -}}
{{- if $l.allow -}}
{{- $_ := set $entry "allow" $l.allow -}}
{{- end -}}
{{- $inbound = append $inbound $entry -}}
{{- end -}}
{{- $_ := set $cfg "inbound" $inbound -}}
{{- $outbound := list -}}
{{- range $i, $l := .Values.proxy.outbound -}}
{{- $entry := dict "name" $l.name "listen" (printf "127.0.0.1:%d" (int $l.port)) "upstream" $l.upstream "protocol" (default "tcp" $l.protocol) -}}
{{- if $l.serverName -}}
{{- $_ := set $entry "server_name" $l.serverName -}}
{{- end -}}
{{- $outbound = append $outbound $entry -}}
{{- end -}}
{{- $_ := set $cfg "outbound" $outbound -}}
{{- toYaml $cfg -}}
{{- end -}}
