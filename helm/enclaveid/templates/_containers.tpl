{{/*
The EnclaveID containers, shared by the workload Deployment and the `helm test` pod.
Mount rule: the key tmpfs (enclaveid-tls) goes into init-proxy, proxy, renew and attest only.
Evidence rule: every container that releases the master secret or produces SNP evidence
(init-secrets, init-proxy, renew, attest) gets the mode's device (enclaveid.evidenceResources,
enclaveid.evidenceMounts); proxy and the app never do.
*/}}

{{- define "enclaveid.container.initSecrets" -}}
{{- if and (eq .Values.deployment "kata-cc") (not .Values.vault.releasePolicy) -}}
{{- fail "vault.releasePolicy is required in kata-cc mode while init.secrets.enabled: a key created in the pod must pin x-ms-sevsnpvm-hostdata to the policy hash (enclaveid-attest policy-hash), and that hash cannot be an argument of the pod it hashes; pass --set-file vault.releasePolicy=FILE, or create the key out of band (enclaveid-init secrets --host-data ...) and set init.secrets.enabled=false" -}}
{{- end -}}
{{- /* `secrets` releases the master secret too (it derives the CA key to check or make the CA
       certificate), so it gets init-proxy's release flags and device, but never the key tmpfs.
       With an akv: vault and confidentiality off, vaultArgs gives it --no-skr instead: no key is
       created, so no policy source follows (enclaveid.noSkr refuses vault.releasePolicy). */}}
{{- $evidenceMounts := include "enclaveid.evidenceMounts" . | trim -}}
- name: init-secrets
  image: {{ include "enclaveid.image" (dict "root" . "image" .Values.images.init "field" "images.init") }}
  imagePullPolicy: {{ .Values.imagePullPolicy }}
  args:
    - secrets
    {{- include "enclaveid.vaultArgs" . | nindent 4 }}
    {{- if .Values.vault.releasePolicy }}
    - --release-policy
    - /etc/enclaveid/release-policy/release-policy.json
    {{- else if and (eq .Values.deployment "aks") (eq (include "enclaveid.confidential" .) "true") }}
    {{- /* Azure's CVM release policy: attestation type sevsnpvm, compliance status
           azure-compliant-cvm (--compliance-status in init.secrets.extraArgs), authority --maa. */}}
    - --cvm-policy
    {{- end }}
    {{- with .Values.init.secrets.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "enclaveid.commonEnv" . | nindent 4 }}
    {{- with .Values.init.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  securityContext:
    {{- include "enclaveid.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- include "enclaveid.evidenceResources" (dict "root" . "resources" .Values.init.resources) | nindent 4 }}
  {{- if or (eq (include "enclaveid.devVault" .) "true") .Values.vault.releasePolicy $evidenceMounts }}
  volumeMounts:
    {{- if eq (include "enclaveid.devVault" .) "true" }}
    - name: dev-vault
      mountPath: {{ .Values.vault.dev.mountPath }}
      readOnly: true
    {{- end }}
    {{- if .Values.vault.releasePolicy }}
    - name: release-policy
      mountPath: /etc/enclaveid/release-policy
      readOnly: true
    {{- end }}
    {{- with $evidenceMounts }}{{ . | nindent 4 }}{{- end }}
  {{- end }}
{{- end -}}

{{- define "enclaveid.container.initProxy" -}}
- name: init-proxy
  image: {{ include "enclaveid.image" (dict "root" . "image" .Values.images.init "field" "images.init") }}
  imagePullPolicy: {{ .Values.imagePullPolicy }}
  args:
    - proxy
    {{- include "enclaveid.vaultArgs" . | nindent 4 }}
    - --out
    - /run/enclaveid/tls
    - --validity
    - {{ .Values.init.leafValidity | quote }}
    {{- include "enclaveid.identityArgs" . | nindent 4 }}
    {{- with .Values.init.proxy.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "enclaveid.commonEnv" . | nindent 4 }}
    {{- with .Values.init.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  securityContext:
    {{- include "enclaveid.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- include "enclaveid.evidenceResources" (dict "root" . "resources" .Values.init.resources) | nindent 4 }}
  volumeMounts:
    - name: enclaveid-tls
      mountPath: /run/enclaveid/tls
    {{- if eq (include "enclaveid.devVault" .) "true" }}
    - name: dev-vault
      mountPath: {{ .Values.vault.dev.mountPath }}
      readOnly: true
    {{- end }}
    {{- with (include "enclaveid.evidenceMounts" . | trim) }}{{ . | nindent 4 }}{{- end }}
{{- end -}}

{{/* Args: dict "root" $ "configMap" NAME "native" BOOL "inbound" BOOL */}}
{{- define "enclaveid.container.proxy" -}}
{{- $root := .root -}}
- name: proxy
  image: {{ include "enclaveid.image" (dict "root" $root "image" $root.Values.images.proxy "field" "images.proxy") }}
  imagePullPolicy: {{ $root.Values.imagePullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  env:
    - name: ENCLAVEID_PROXY_CONFIG
      value: /etc/enclaveid/proxy/proxy.yaml
    {{- include "enclaveid.commonEnv" $root | nindent 4 }}
  {{- if .inbound }}
  ports:
    {{- range $root.Values.proxy.inbound }}
    - name: {{ printf "in-%s" .name | trunc 15 | trimSuffix "-" }}
      containerPort: {{ .port }}
      protocol: TCP
    {{- end }}
    {{- if $root.Values.metrics.expose }}
    - name: proxy-admin
      containerPort: {{ $root.Values.proxy.adminPort }}
      protocol: TCP
    {{- end }}
  {{- end }}
  {{- /* The admin listener binds 127.0.0.1 (enclaveid.adminHost): exec probes, not httpGet. */}}
  {{- $probe := dict "root" $root "binary" "/usr/local/bin/enclaveid-proxy" "port" $root.Values.proxy.adminPort }}
  startupProbe:
    {{- include "enclaveid.execProbe" (merge (dict "path" "/ready") $probe) | nindent 4 }}
    periodSeconds: 1
    failureThreshold: {{ $root.Values.probes.startupSeconds }}
  readinessProbe:
    {{- include "enclaveid.execProbe" (merge (dict "path" "/ready") $probe) | nindent 4 }}
    periodSeconds: 5
  livenessProbe:
    {{- include "enclaveid.execProbe" (merge (dict "path" "/live") $probe) | nindent 4 }}
    periodSeconds: 10
    failureThreshold: 3
  securityContext:
    {{- include "enclaveid.containerSecurityContext" $root | nindent 4 }}
  resources:
    {{- toYaml $root.Values.proxy.resources | nindent 4 }}
  volumeMounts:
    - name: enclaveid-tls
      mountPath: /run/enclaveid/tls
      readOnly: true
    - name: proxy-config
      mountPath: /etc/enclaveid/proxy
      readOnly: true
{{- end -}}

{{/* Args: dict "root" $ "native" BOOL */}}
{{- define "enclaveid.container.renew" -}}
{{- $root := .root -}}
- name: renew
  image: {{ include "enclaveid.image" (dict "root" $root "image" $root.Values.images.init "field" "images.init") }}
  imagePullPolicy: {{ $root.Values.imagePullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  args:
    - renew
    {{- include "enclaveid.vaultArgs" $root | nindent 4 }}
    - --out
    - /run/enclaveid/tls
    - --validity
    - {{ $root.Values.init.leafValidity | quote }}
    {{- include "enclaveid.identityArgs" $root | nindent 4 }}
    {{- with $root.Values.renew.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "enclaveid.commonEnv" $root | nindent 4 }}
    {{- with $root.Values.init.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  securityContext:
    {{- include "enclaveid.containerSecurityContext" $root | nindent 4 }}
  resources:
    {{- include "enclaveid.evidenceResources" (dict "root" $root "resources" $root.Values.renew.resources) | nindent 4 }}
  volumeMounts:
    - name: enclaveid-tls
      mountPath: /run/enclaveid/tls
    {{- if eq (include "enclaveid.devVault" $root) "true" }}
    - name: dev-vault
      mountPath: {{ $root.Values.vault.dev.mountPath }}
      readOnly: true
    {{- end }}
    {{- with (include "enclaveid.evidenceMounts" $root | trim) }}{{ . | nindent 4 }}{{- end }}
{{- end -}}

{{/*
The attestation server. It terminates TLS with the pod's leaf key (read-only mount of the key
tmpfs): that key's SPKI is what the evidence binds, so clients that verify it can pin it.
*/}}
{{- define "enclaveid.container.attest" -}}
- name: attest
  image: {{ include "enclaveid.image" (dict "root" . "image" .Values.images.attest "field" "images.attest") }}
  imagePullPolicy: {{ .Values.imagePullPolicy }}
  args:
    - serve
    - --listen
    - {{ printf "0.0.0.0:%d" (int .Values.attest.port) | quote }}
    - --admin
    - {{ printf "%s:%d" (include "enclaveid.adminHost" .) (int .Values.attest.adminPort) | quote }}
    - --tls-cert
    - /run/enclaveid/tls/cert.pem
    - --tls-key
    - /run/enclaveid/tls/key.pem
    - --provider
    - {{ include "enclaveid.provider" . }}
    {{- if eq .Values.deployment "aks" }}
    - --tcti
    - {{ .Values.aks.vtpm.tcti | quote }}
    - --vcek
    - {{ .Values.aks.vtpm.vcek | quote }}
    {{- else if eq .Values.deployment "kata-cc" }}
    - --sev-guest-device
    - {{ .Values.kataCC.sevGuestDevice | quote }}
    {{- end }}
    {{- with .Values.attest.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "enclaveid.commonEnv" . | nindent 4 }}
  ports:
    - name: attest
      containerPort: {{ .Values.attest.port }}
      protocol: TCP
    {{- if .Values.metrics.expose }}
    - name: attest-admin
      containerPort: {{ .Values.attest.adminPort }}
      protocol: TCP
    {{- end }}
  {{- /* Ready once the evidence provider has produced evidence; live while the admin listener
         answers (/metrics always does). Loopback listener, so exec probes. */}}
  {{- $probe := dict "root" . "binary" "/usr/local/bin/enclaveid-attest" "port" .Values.attest.adminPort }}
  readinessProbe:
    {{- include "enclaveid.execProbe" (merge (dict "path" "/ready") $probe) | nindent 4 }}
    periodSeconds: 5
  livenessProbe:
    {{- include "enclaveid.execProbe" (merge (dict "path" "/metrics") $probe) | nindent 4 }}
    periodSeconds: 10
    failureThreshold: 3
  securityContext:
    {{- include "enclaveid.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- include "enclaveid.evidenceResources" (dict "root" . "resources" .Values.attest.resources) | nindent 4 }}
  volumeMounts:
    - name: enclaveid-tls
      mountPath: /run/enclaveid/tls
      readOnly: true
    {{- with (include "enclaveid.evidenceMounts" . | trim) }}{{ . | nindent 4 }}{{- end }}
{{- end -}}

{{/* The app containers from values: hardened, loopback-only mesh access, no key volume. */}}
{{- define "enclaveid.container.apps" -}}
{{- $root := . -}}
{{- range $i, $c := .Values.app.containers }}
- name: {{ $c.name }}
  image: {{ include "enclaveid.appImage" (dict "root" $root "image" $c.image "field" (printf "app.containers[%d].image" $i)) }}
  imagePullPolicy: {{ $root.Values.imagePullPolicy }}
  {{- with $c.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.workingDir }}
  workingDir: {{ . }}
  {{- end }}
  {{- if or $root.Values.proxy.outbound $c.env }}
  env:
    {{- range $root.Values.proxy.outbound }}
    - name: {{ printf "ENCLAVEID_OUTBOUND_%s" (.name | upper | replace "-" "_") }}
      value: {{ printf "127.0.0.1:%d" (int .port) | quote }}
    {{- end }}
    {{- with $c.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- with $c.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- range $probe := list "startupProbe" "readinessProbe" "livenessProbe" }}
  {{- with (get $c $probe) }}
  {{ $probe }}:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- end }}
  securityContext:
    {{- include "enclaveid.containerSecurityContext" $root | nindent 4 }}
  {{- with $c.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: app-tmp
      mountPath: /tmp
    {{- $appVolumes := list }}
    {{- range $root.Values.app.volumes }}{{ $appVolumes = append $appVolumes .name }}{{ end }}
    {{- range $j, $m := (default list $c.volumeMounts) }}
    {{- if not (has $m.name $appVolumes) }}
    {{- fail (printf "app.containers[%d].volumeMounts[%d].name = %q: app containers may mount only app.volumes (%s); the key tmpfs, proxy config and vault stay out of the app" $i $j $m.name (join ", " $appVolumes)) }}
    {{- end }}
    - {{ toYaml $m | nindent 6 | trim }}
    {{- end }}
    {{- if and (eq $root.Values.deployment "kata-cc") $root.Values.kataCC.remotefs.enabled }}
    - name: remotefs
      mountPath: {{ $root.Values.kataCC.remotefs.mountPath }}
      mountPropagation: HostToContainer
      readOnly: true
    {{- end }}
{{- end }}
{{- end -}}

{{- define "enclaveid.container.remotefs" -}}
{{- if not .Values.kataCC.remotefs.allowPrivileged -}}
{{- fail "kataCC.remotefs.enabled = true: the remotefs sidecar runs privileged with /dev to mount dm-crypt volumes; set kataCC.remotefs.allowPrivileged=true to accept that one exception" -}}
{{- end -}}
- name: remotefs
  image: {{ include "enclaveid.image" (dict "root" . "image" .Values.images.remotefs "field" "images.remotefs") }}
  imagePullPolicy: {{ .Values.imagePullPolicy }}
  command: ["/encfs.sh"]
  env:
    - name: EncfsSideCarArgs
      value: {{ required "kataCC.remotefs.args is required when kataCC.remotefs.enabled (base64 JSON of the sidecar arguments)" .Values.kataCC.remotefs.args | quote }}
    - name: UVM_SECURITY_CONTEXT_DIR
      value: /opt/confidential-containers/share/kata-containers
  securityContext:
    # The documented exception (kataCC.remotefs.allowPrivileged): dm-crypt needs it.
    privileged: true
    allowPrivilegeEscalation: true
    readOnlyRootFilesystem: false
    runAsNonRoot: false
    runAsUser: 0
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: uvm-reference-info
      mountPath: /opt/confidential-containers/share/kata-containers/reference-info-base64
      readOnly: true
    - name: uvm-dev
      mountPath: /dev
    - name: remotefs
      mountPath: {{ .Values.kataCC.remotefs.mountPath }}
      mountPropagation: Bidirectional
{{- end -}}
