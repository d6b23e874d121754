# EnclaveID: the commands people already know.
.PHONY: test demo
test:
	bash scripts/test.sh

demo:
	cargo run -p enclaveid-proxy -- demo

# ---------------------------------------------------------------------------------------------
# Images, chart renders and checks (the deployment area; see docs/deploy-*.md).
#   make                                   build every image that has a Dockerfile, with Kaniko
#                                          in the current cluster, and pin the digests
#   make helm-chart DEPLOYMENT=microk8s|aks|kata-cc [VALUES=my.yaml] [KATA_POLICY=policy.rego]
#                                          render into renders/<DEPLOYMENT>.yaml with the digests
#                                          from helm/images.yaml (the one pinned file)
#   make verify-images                     pull, rebuild, compare file by file
#   make check-reproducible                build the release binaries twice and compare
#   make check-base-images                 every FROM and the Kaniko image by digest, from
#                                          build/base-images.env (the base-image pin file)
#   make diagrams                          docs/diagrams/*.dot -> docs/*.svg
.DEFAULT_GOAL := images
IMAGES := $(patsubst %/Dockerfile,%,$(wildcard */Dockerfile))
.PHONY: images helm-chart verify-images check-reproducible check-base-images diagrams $(addprefix image-,$(IMAGES))
HELM ?= $(shell command -v helm 2>/dev/null || echo "$$(go env GOPATH)/bin/helm")
KUBE_VERSION ?= 1.37.0
RELEASE ?= enclaveid
NAMESPACE ?= enclaveid
DEPLOYMENT ?=
VALUES ?=
KATA_POLICY ?=
RENDERS ?= renders

images: $(addprefix image-,$(IMAGES))

image-%:
	bash build/kaniko-build.sh $*

helm-chart:
	@case "$(DEPLOYMENT)" in microk8s|aks|kata-cc) ;; \
	  *) echo "usage: make helm-chart DEPLOYMENT=microk8s|aks|kata-cc" >&2; exit 2;; esac
	@mkdir -p $(RENDERS)
	$(HELM) template $(RELEASE) helm/enclaveid --namespace $(NAMESPACE) --kube-version $(KUBE_VERSION) \
	  -f helm/images.yaml --set deployment=$(DEPLOYMENT) $(addprefix -f ,$(VALUES)) \
	  $(if $(KATA_POLICY),--set-file kataCC.policy=$(KATA_POLICY)) > $(RENDERS)/$(DEPLOYMENT).yaml.tmp \
	  || { rm -f $(RENDERS)/$(DEPLOYMENT).yaml.tmp; exit 1; }
	mv $(RENDERS)/$(DEPLOYMENT).yaml.tmp $(RENDERS)/$(DEPLOYMENT).yaml
	@echo "rendered $(RENDERS)/$(DEPLOYMENT).yaml"

verify-images:
	bash build/verify-images.sh

check-reproducible:
	bash scripts/check-reproducible.sh

check-base-images:
	python3 scripts/check-base-images.py

diagrams:
	for f in docs/diagrams/*.dot; do dot -Tsvg "$$f" -o "docs/$$(basename "$${f%.dot}").svg"; done
