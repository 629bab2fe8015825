# vault-plugin-secrets-ermeo
#   make demo   a real Vault with the plugin, the fake Ermeo, and `vault read ermeo/creds/app`
#   make test   go vet, unit tests with -race, and end-to-end tests against a real Vault

VERSION  ?= v0.1.0
PLUGIN   := vault-plugin-secrets-ermeo
MODULE   := github.com/ermeo-community/vault-plugin-secrets-ermeo
LDFLAGS  := -X $(MODULE).Version=$(VERSION)
GOFILES  := $(shell find . -name '*.go' -not -path './.demo/*') go.mod go.sum

.PHONY: all build vault demo test unit e2e vet fmt-check clean

all: build

build: bin/$(PLUGIN) bin/fake-ermeo

bin/$(PLUGIN): $(GOFILES)
	go build -ldflags "$(LDFLAGS)" -o $@ ./cmd/$(PLUGIN)

bin/fake-ermeo: $(GOFILES)
	go build -o $@ ./cmd/fake-ermeo

# Prints the path of a vault binary 1.15+, building one once if needed.
vault:
	@scripts/vault-bin.sh

demo: build
	VERSION=$(VERSION) scripts/demo.sh

vet:
	go vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

# Every test: unit tests with the race detector, then the e2e tests, which
# start a real vault server (obtained by scripts/vault-bin.sh) with the plugin
# and print the Vault version and their figures (hence -v).
test: fmt-check vet unit e2e

unit:
	go test -race -count=1 $$(go list ./... | grep -v /internal/e2e)

e2e:
	vault="$$(scripts/vault-bin.sh)" && VAULT_BIN="$$vault" ERMEO_E2E_REQUIRED=1 go test -race -count=1 -v ./internal/e2e/

clean:
	rm -rf bin .demo
