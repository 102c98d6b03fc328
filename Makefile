# regomesh build. GNU make; everything it needs comes from the Go module proxy.
#
#   make build    go build ./... and one static binary per cmd/<name> into bin/
#   make test     lint, Go tests (race detector), Rego tests and strict check with stock OPA
#   make lint     gofmt and go vet
#   make bench    policy benchmarks (BENCH=regexp filters them)
#   make demo     go run ./cmd/regomesh demo $(ARGS)
#   make bench-mesh  mesh benchmarks vs direct TCP and an haproxy TLS pair: go run ./test/bench $(ARGS) (root)
#   make tools    build-time tools from tools/go.mod into bin/ (cached)
#   make spire    real spire-server and spire-agent from tools/spire/go.mod into bin/ (cached)
#   make clean    remove bin/

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

GO ?= go
BIN := bin
OPA := $(BIN)/opa
SPIRE := $(BIN)/spire-server $(BIN)/spire-agent

# Every cmd/<name>/main.go is a binary bin/<name>: new commands need no edit here.
CMDS := $(patsubst cmd/%/main.go,%,$(wildcard cmd/*/main.go))

# Rego the stock OPA CLI tests and checks: the library and the example bundle.
# (examples/inputs holds input documents, not data: loaded as data, they
# would collide.) Skipped tests (todo_test_...: known bugs) are listed but
# do not fail the run.
REGO_DIRS := rego/ examples/bundle/ examples/tests/

TEST_TIMEOUT ?= 10m
BENCH ?= .
ARGS ?=

# The race detector needs cgo and a C compiler; without them tests run without it.
RACE := $(shell [ "$$($(GO) env CGO_ENABLED)" = 1 ] && command -v "$$($(GO) env CC)" >/dev/null && echo -race)

.PHONY: build test lint bench bench-mesh demo tools spire clean

build:
	$(GO) build ./...
ifneq ($(CMDS),)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(CMDS))
endif

test: lint tools spire
ifeq ($(RACE),)
	@echo "make test: no C compiler for cgo, running Go tests without -race" >&2
endif
	$(GO) test $(RACE) -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(OPA) test --fail-on-empty --exit-zero-on-skipped $(REGO_DIRS)
	$(OPA) check --strict $(REGO_DIRS)

lint:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchmem ./policy/...

# The mesh demo runs real SPIRE and nftables in network namespaces: root, and bin/spire-*.
demo: spire
	$(GO) run ./cmd/regomesh demo $(ARGS)

# The mesh benchmarks against baselines measured in the same run (test/bench):
# root, bin/spire-*, and haproxy (installed with apt-get when missing).
bench-mesh: spire
	$(GO) run ./test/bench $(ARGS)

tools: $(OPA)

# The stock OPA CLI, at the version tools/go.mod pins; rebuilt only when that changes.
$(OPA): tools/go.mod tools/go.sum
	$(GO) build -C tools -o ../$(OPA) github.com/open-policy-agent/opa
	@touch $@

spire: $(SPIRE)

# Real SPIRE for the spire/ tests, e2e and the demo, at the version tools/spire/go.mod
# pins (its own module: SPIRE needs older gRPC and go-spiffe than OPA's); rebuilt only
# when that changes. The first build takes minutes.
$(SPIRE): $(BIN)/spire-%: tools/spire/go.mod tools/spire/go.sum
	$(GO) build -C tools/spire -o ../../$@ github.com/spiffe/spire/cmd/spire-$*
	@touch $@

clean:
	rm -rf $(BIN)
