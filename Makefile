# subbus — see README.md.
GO      ?= go
PKGS    ?= ./...
TIMEOUT ?= 20m

.PHONY: all build test check setup unit bench demo fuzz clean

all: build

build:
	$(GO) build -o bin/worker ./cmd/worker
	$(GO) build -o bin/subbus ./cmd/subbus
	$(GO) build -o bin/pvesim ./cmd/pvesim

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

clean:
	rm -rf bin
