# regomesh build. GNU make; everything it needs comes from the Go module proxy.
#
#   make build    go build ./... and one static binary per cmd/<name> into bin/
#   make test     lint, Go tests (race detector, then the shrunk cases at full size),
#                 Rego tests and strict check with stock OPA; root, a C compiler and nginx (installed)
#   make lint     gofmt and go vet
#   make bench    policy benchmarks (BENCH=regexp filters them)
#   make demo     go run ./cmd/regomesh demo $(ARGS)
#   make demo-k8s the same demo driven by a real kube-apiserver and regomesh-controller:
#                 go run ./cmd/regomesh demo --kubernetes $(ARGS) (root; builds what make spire and make kube do)
#   make bench-mesh  mesh benchmarks vs direct TCP and haproxy (TLS pair; L7 chain for the waypoint): go run ./test/bench $(ARGS) (root)
#   make tools    build-time tools from tools/go.mod into bin/ (cached)
#   make spire    real spire-server and spire-agent from tools/spire/go.mod into bin/ (cached)
#   make kube     a real kube-apiserver from tools/kube-apiserver/go.mod into bin/ (cached;
#                 the first build takes 10-20 minutes), and etcd (Debian's etcd-server,
#                 installed with apt-get when missing), for controller/kubeharness
#   make images   one container image per images/<name>/Dockerfile, with docker, podman
#                 or buildah (IMAGE_REGISTRY, IMAGE_TAG); fails when none is installed
#   make charts-crds  copy the CRDs the go.mod-pinned istio.io/api and gateway-api ship
#                 into charts/regomesh-base/files (charts/chartstest checks they match)
#   make charts-test  the chart tests alone: lint, renders, schema, a real API server
#   make clean    remove bin/

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

GO ?= go
BIN := bin
OPA := $(BIN)/opa
H2SPEC := $(BIN)/h2spec
SPIRE := $(BIN)/spire-server $(BIN)/spire-agent
KUBE_APISERVER := $(BIN)/kube-apiserver

# Every cmd/<name>/main.go is a binary bin/<name>: new commands need no edit here.
CMDS := $(patsubst cmd/%/main.go,%,$(wildcard cmd/*/main.go))

# Rego the stock OPA CLI tests and checks: the library and the example bundle.
# (examples/inputs holds input documents, not data: loaded as data, they
# would collide.) Skipped tests (todo_test_...: known bugs) are listed but
# do not fail the run.
REGO_DIRS := rego/ examples/bundle/ examples/tests/

TEST_TIMEOUT ?= 10m
# Test binaries run four at a time, not GOMAXPROCS (two here): most of the
# suite waits (on SPIRE, kube-apiserver, network namespaces, timeouts it
# tests), and at two at a time the cores sat half idle.
TEST_P ?= 4
# The packages whose tests take longest, listed before ./... so that they
# start first (go test runs packages in the order given, duplicates
# dropped): the short ones then fill the cores around them, instead of
# test/e2e, which sorts last, starting last and running alone.
TEST_FIRST := ./test/e2e/ ./cli/ ./charts/chartstest/ ./policy/ ./policy/istio/ ./controller/ \
	./cmd/regomesh-controller/ ./cmd/ztunnel/ ./controller/kubeharness/ ./hbone/ ./cmd/waypoint/ ./spire/
BENCH ?= .
ARGS ?=

# The suite links its binaries without DWARF (-w): the test binaries and
# those the tests build (cmd/ztunnel, cmd/waypoint, ...). Nothing debugs
# them, and the link is the slow part of a warm run's build: `go test
# -race -count=1 -run NONE ./...` took 2m12s with DWARF, 1m28s without.
# GOFLAGS, so that the tests' own go builds inherit it; it is appended to
# go env GOFLAGS, so an -ldflags of the user's there gives way to it (set
# TEST_GOFLAGS to keep both).
TEST_GOFLAGS ?= -ldflags=-w
TEST_ENV = GOFLAGS="$$($(GO) env GOFLAGS) $(TEST_GOFLAGS)"

# The tools the tests run are built without DWARF too, and kept in a cache
# keyed by their go.mod, go.sum, .go files, flags and Go environment (tools/cachedbuild):
# a clean clone copies them instead of linking each again.
TOOL_BUILD = GO=$(GO) tools/cachedbuild

# The cases that the race detector's slowdown shrinks (see each test's
# raceEnabled or size_*_test.go), run once more at full size without it,
# in one go test so that the three packages run side by side. Each name is
# a test of one package only.
FULL_SIZE := ^(TestNativeAgreesWithTopdown|TestLargeTransferBothWays|TestBulkIntegrityWhilePolicyReloadsAndSVIDsRotate)$$
FULL_SIZE_PKGS := ./policy/ ./hbone/ ./test/e2e/

.PHONY: build test test-prereqs test-tools lint bench bench-mesh demo demo-k8s tools spire kube etcd images charts-crds charts-test clean

build:
	$(GO) build ./...
ifneq ($(CMDS),)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(CMDS))
endif

# Go tests run with the race detector, then the shrunk cases at full size
# without it. Nothing is skipped quietly: the e2e, capture and netbed tests
# need root (network namespaces, nftables), and -race needs cgo.
test: test-prereqs lint test-tools
	$(TEST_ENV) REGOMESH_REQUIRE_NGINX=1 CGO_ENABLED=1 $(GO) test -race -count=1 -p $(TEST_P) -timeout $(TEST_TIMEOUT) $(TEST_FIRST) ./...
	@echo "full size, without the race detector:"
	$(TEST_ENV) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run '$(FULL_SIZE)' $(FULL_SIZE_PKGS)
	$(OPA) test --fail-on-empty --exit-zero-on-skipped $(REGO_DIRS)
	$(OPA) check --strict $(REGO_DIRS)

# Root for the tests that build networks; a C compiler for -race (cgo),
# and nginx, the bundle server policy/opabundles downloads from, each
# installed when missing if apt-get can, else a loud failure.
test-prereqs:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make test: run as root: the e2e, capture and netbed tests need network namespaces and nftables, and skip without root (go test ./... runs the rest)" >&2; exit 1; fi
	@cc="$$(CGO_ENABLED=1 $(GO) env CC)"; \
	if ! command -v "$$cc" >/dev/null; then \
		if command -v apt-get >/dev/null; then \
			echo "make test: no C compiler ($$cc) for the race detector: installing gcc" >&2; \
			apt-get install -y gcc >/dev/null || { apt-get update >/dev/null && apt-get install -y gcc >/dev/null; }; \
		fi; \
		command -v "$$cc" >/dev/null || { echo "make test: the race detector needs cgo and a C compiler ($$cc): install one" >&2; exit 1; }; \
	fi
	@if ! PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null; then \
		if command -v apt-get >/dev/null; then \
			echo "make test: no nginx for policy/opabundles' bundle server tests: installing nginx" >&2; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y nginx >/dev/null || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx >/dev/null; }; \
		fi; \
		PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null || { echo "make test: policy/opabundles tests need nginx: install it (Debian: apt-get install nginx)" >&2; exit 1; }; \
	fi

# The tools the tests run, two builds at a time even under a plain `make
# test`: cold, kube-apiserver and SPIRE are the two long ones (10-20
# minutes each here), in separate modules, so separate go builds, and one
# alone leaves a core idle while it downloads modules and through its long
# single-threaded link. kube-apiserver starts first; the other slot builds
# SPIRE and then OPA and h2spec.
test-tools:
	$(MAKE) -j2 kube spire tools

lint:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchmem ./policy/...

# The mesh demo runs real SPIRE and nftables in network namespaces: root, and bin/spire-*.
demo: spire
	$(GO) run ./cmd/regomesh demo $(ARGS)

# The same demo driven by a real kube-apiserver, etcd and regomesh-controller:
# root, bin/spire-*, bin/kube-apiserver and etcd.
demo-k8s: spire kube
	$(GO) run ./cmd/regomesh demo --kubernetes $(ARGS)

# The mesh benchmarks against baselines measured in the same run (test/bench):
# root, bin/spire-*, and haproxy (installed with apt-get when missing).
bench-mesh: spire
	$(GO) run ./test/bench $(ARGS)

tools: $(OPA) $(H2SPEC)

# The stock OPA CLI, at the version tools/go.mod pins; rebuilt only when that changes.
$(OPA): tools/go.mod tools/go.sum
	$(TOOL_BUILD) $@ tools -ldflags=-w github.com/open-policy-agent/opa
	@touch $@

# h2spec, the HTTP/2 conformance suite hbone's TestH2Spec runs against a Server
# (skipped without it), at the version tools/h2spec/go.mod pins; see docs/h2spec.md.
$(H2SPEC): tools/h2spec/go.mod tools/h2spec/go.sum
	$(TOOL_BUILD) $@ tools/h2spec -ldflags=-w github.com/summerwind/h2spec/cmd/h2spec
	@touch $@

spire: $(SPIRE)

# Real SPIRE for the spire/ tests, e2e and the demo, at the version tools/spire/go.mod
# pins (its own module: SPIRE needs older gRPC and go-spiffe than OPA's); rebuilt only
# when that changes. The first build takes minutes.
$(SPIRE): $(BIN)/spire-%: tools/spire/go.mod tools/spire/go.sum
	$(TOOL_BUILD) $@ tools/spire -ldflags=-w github.com/spiffe/spire/cmd/spire-$*
	@touch $@

kube: etcd $(KUBE_APISERVER)

# The release that tools/kube-apiserver/go.mod pins, stamped in as
# Kubernetes' own build does; unstamped, /version says v0.0.0-master.
KUBE_VERSION = $(shell awk '$$1 == "k8s.io/kubernetes" { print $$2; exit }' tools/kube-apiserver/go.mod)
KUBE_VERSION_PARTS = $(subst ., ,$(KUBE_VERSION:v%=%))
KUBE_LDFLAGS = -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=$(word 1,$(KUBE_VERSION_PARTS)) \
	-X k8s.io/component-base/version.gitMinor=$(word 2,$(KUBE_VERSION_PARTS)) \
	-X k8s.io/component-base/version.gitTreeState=clean

# A real kube-apiserver for controller/kubeharness, at the version
# tools/kube-apiserver/go.mod pins (its own module: Kubernetes' pins never
# meet the main module's or SPIRE's); rebuilt only when that changes. The
# first build takes 10-20 minutes.
$(KUBE_APISERVER): tools/kube-apiserver/go.mod tools/kube-apiserver/go.sum tools/kube-apiserver/main.go
	$(TOOL_BUILD) $@ tools/kube-apiserver -ldflags '-w $(KUBE_LDFLAGS)' .
	@touch $@

# etcd behind that API server: Debian's etcd-server (3.4), installed when
# missing if apt-get can, else a loud failure.
etcd:
	@if ! command -v etcd >/dev/null; then \
		if command -v apt-get >/dev/null; then \
			echo "make kube: no etcd for the API server: installing etcd-server" >&2; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >/dev/null || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >/dev/null; }; \
		fi; \
		command -v etcd >/dev/null || { echo "make kube: controller/kubeharness needs etcd on PATH: install etcd-server (Debian) or etcd 3.4+" >&2; exit 1; }; \
	fi

# Container images: images/<name>/Dockerfile, built from the repository's
# root. No container engine runs in CI here, so nothing tests this target.
IMAGES := $(patsubst images/%/Dockerfile,%,$(wildcard images/*/Dockerfile))
IMAGE_REGISTRY ?= ghcr.io/regomesh
IMAGE_TAG ?= $(shell awk '$$1 == "appVersion:" { gsub(/"/, "", $$2); print $$2 }' charts/regomesh/Chart.yaml)
CONTAINER_ENGINE ?= $(firstword $(foreach e,docker podman buildah,$(if $(shell command -v $(e)),$(e))))

images:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
		echo "make images: no container engine: install docker, podman or buildah (or set CONTAINER_ENGINE)" >&2; exit 1; fi
	@$(CONTAINER_ENGINE) info >/dev/null 2>&1 || { \
		echo "make images: $(CONTAINER_ENGINE) is installed but cannot build ($(CONTAINER_ENGINE) info fails: is its daemon running?)" >&2; exit 1; }
	@for n in $(IMAGES); do \
		echo "$(CONTAINER_ENGINE) build -f images/$$n/Dockerfile -t $(IMAGE_REGISTRY)/$$n:$(IMAGE_TAG) ."; \
		if [ "$(CONTAINER_ENGINE)" = buildah ]; then \
			buildah bud -f images/$$n/Dockerfile -t $(IMAGE_REGISTRY)/$$n:$(IMAGE_TAG) . ; \
		else \
			$(CONTAINER_ENGINE) build -f images/$$n/Dockerfile -t $(IMAGE_REGISTRY)/$$n:$(IMAGE_TAG) . ; \
		fi; \
	done

charts-crds:
	$(GO) test -count=1 -run '^TestCRDsMatchModules$$' ./charts/chartstest -update

# The chart tests; TestAPIServerAccepts skips without `make kube`'s binaries.
charts-test:
	$(GO) test -count=1 ./charts/...

clean:
	rm -rf $(BIN)
