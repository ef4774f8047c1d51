# subbus — see README.md.
GO      ?= go
PKGS    ?= ./...
TIMEOUT ?= 20m

.PHONY: all build test check setup unit bench demo fuzz images clean man

all: build

build:
	$(GO) build -o bin/worker ./cmd/worker
	$(GO) build -o bin/subbus ./cmd/subbus
	$(GO) build -o bin/pvesim ./cmd/pvesim

# make man: the subbus(1) page, made from the CLI's command table
# (bin/subbus.1; read it with man -l bin/subbus.1).
man: build
	bin/subbus man > bin/subbus.1

# make test: what .ci/run runs. Sets up the daemons, then vet, gofmt and
# the whole suite with the race detector.
test: setup check
	$(GO) test -race -count=1 -timeout $(TIMEOUT) $(PKGS)

# Tests without setting up daemons (their tests skip when absent).
unit: check
	$(GO) test -race -count=1 $(PKGS)

check:
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

setup:
	bash scripts/test-setup.sh

bench: setup
	bash scripts/bench.sh

fuzz:
	bash scripts/fuzz.sh

demo: build
	bash scripts/demo.sh

# make images: offline container images (docs/deploy.md). Static binaries
# are compiled here and copied into FROM scratch images; nothing is pulled
# or downloaded. Tags: $(IMAGE_PREFIX)/worker:$(IMAGE_TAG) (worker and
# subbus) and $(IMAGE_PREFIX)/nats-server:$(IMAGE_TAG) (nats-server from
# the Go module pinned in go.mod).
IMAGE_PREFIX ?= subbus
IMAGE_TAG    ?= latest
IMAGE_DIR    ?= bin/images
# VERSION=1.2.3 stamps both binaries; it must be SemVer (micro discovery
# requires it). Empty: the version compiled in.
VERSION      ?=
STATIC        = CGO_ENABLED=0 $(GO) build -trimpath
images:
	rm -rf $(IMAGE_DIR)
	mkdir -p $(IMAGE_DIR)/worker/rootfs/usr/local/bin $(IMAGE_DIR)/worker/rootfs/etc/subbus \
		$(IMAGE_DIR)/worker/rootfs/tmp $(IMAGE_DIR)/nats-server
	chmod 1777 $(IMAGE_DIR)/worker/rootfs/tmp
	cp deployments/images/passwd deployments/images/group $(IMAGE_DIR)/worker/rootfs/etc/
	cp deployments/substrate_config.yaml $(IMAGE_DIR)/worker/rootfs/etc/subbus/
	$(STATIC) -ldflags "-s -w $(if $(VERSION),-X github.com/subbus/subbus/internal/version.Version=$(VERSION))" -o $(IMAGE_DIR)/worker/rootfs/usr/local/bin/worker ./cmd/worker
	$(STATIC) -ldflags "-s -w $(if $(VERSION),-X github.com/subbus/subbus/internal/version.Version=$(VERSION))" -o $(IMAGE_DIR)/worker/rootfs/usr/local/bin/subbus ./cmd/subbus
	$(STATIC) -ldflags "-s -w" -o $(IMAGE_DIR)/nats-server/nats-server github.com/nats-io/nats-server/v2
	docker build -q -f deployments/images/worker.Dockerfile -t $(IMAGE_PREFIX)/worker:$(IMAGE_TAG) $(IMAGE_DIR)/worker
	docker build -q -f deployments/images/nats-server.Dockerfile -t $(IMAGE_PREFIX)/nats-server:$(IMAGE_TAG) $(IMAGE_DIR)/nats-server

clean:
	rm -rf bin
