# vault-plugin-secrets-ermeo
#   make demo   a real Vault with the plugin, the fake Ermeo, and `vault read ermeo/creds/app`
#   make test   go vet, unit tests with -race, and end-to-end tests against a real Vault
#   make cluster  a 3-node Vault cluster (Raft) with the plugin and a fake Ermeo, until Ctrl-C
#   make release  reproducible plugin binaries for every platform, and their SHA256SUMS, in dist/
#   make soak   a long run (SOAK=30m) of a namespaced 3-node cluster under random faults, with its table

SHELL         := /bin/bash
.SHELLFLAGS   := -o pipefail -c

VERSION  ?= v0.1.0
BIN      ?= bin
PLUGIN   := vault-plugin-secrets-ermeo
MODULE   := github.com/ermeo-community/vault-plugin-secrets-ermeo
LDFLAGS  := -X $(MODULE).Version=$(VERSION)
GOFILES  := $(shell find . -name '*.go' -not -path './.demo/*') go.mod go.sum

.PHONY: all build release vault demo cluster bench test unit models e2e soak alerts-test chaos fuzz fuzz-smoke vet fmt-check docs clean FORCE

all: build

# The binaries go to $(BIN) (default bin/; make demo and scripts use bin/).
build: $(BIN)/$(PLUGIN) $(BIN)/fake-ermeo

$(BIN)/$(PLUGIN): $(GOFILES) $(BIN)/.version
	go build -ldflags "$(LDFLAGS)" -o $@ ./cmd/$(PLUGIN)

# The VERSION the plugin was last built with. Its recipe runs every time but
# rewrites the file only when VERSION differs, so that a new VERSION, and only
# a new VERSION, rebuilds the plugin (its -ldflags carry the version).
$(BIN)/.version: FORCE
	@mkdir -p $(@D); [ "$$(cat $@ 2>/dev/null)" = '$(VERSION)' ] || printf '%s\n' '$(VERSION)' >$@

$(BIN)/fake-ermeo: $(GOFILES)
	go build -o $@ ./cmd/fake-ermeo

# Release binaries, one per platform, named with VERSION and the platform
# (dist/vault-plugin-secrets-ermeo_v0.2.0_linux_amd64), and their SHA256SUMS.
# Reproducible: the same commit, VERSION and Go version give the same bytes
# wherever the repository is checked out (no cgo, no paths, no VCS stamp, no
# build id). make release VERSION=v0.2.0 RELEASE_PLATFORMS="linux/amd64".
DIST              ?= dist
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 freebsd/amd64
RELEASE_LDFLAGS   := -s -w -buildid= $(LDFLAGS)
$(foreach p,$(RELEASE_PLATFORMS),$(if $(filter 2,$(words $(subst /, ,$(p)))),,$(error RELEASE_PLATFORMS: "$(p)" is not <os>/<arch>)))
RELEASE_FILES     := $(foreach p,$(RELEASE_PLATFORMS),$(DIST)/$(PLUGIN)_$(VERSION)_$(subst /,_,$(p)))

release: $(DIST)/SHA256SUMS

# The stem is <os>_<arch>; VERSION is in the name, so a new VERSION is a new
# file and rebuilds.
$(DIST)/$(PLUGIN)_$(VERSION)_%: $(GOFILES)
	@mkdir -p $(@D)
	CGO_ENABLED=0 GOOS=$(word 1,$(subst _, ,$*)) GOARCH=$(word 2,$(subst _, ,$*)) \
	  go build -trimpath -buildvcs=false -ldflags "$(RELEASE_LDFLAGS)" -o $@ ./cmd/$(PLUGIN)

# Sorted by file name, in sha256sum's format (sha256sum -c SHA256SUMS in dist/).
$(DIST)/SHA256SUMS: $(RELEASE_FILES) $(DIST)/.release
	cd $(@D) && sha256sum $(notdir $(RELEASE_FILES)) | LC_ALL=C sort -k 2 >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS

# The VERSION and platforms dist/ was last released with, as $(BIN)/.version:
# rewritten only when they differ, which then also removes the binaries of
# other versions or platforms, so that dist/ holds one release and
# SHA256SUMS is rewritten over exactly it.
$(DIST)/.release: FORCE
	@mkdir -p $(@D); want='$(VERSION) $(strip $(RELEASE_PLATFORMS))'; \
	if [ "$$(cat $@ 2>/dev/null)" != "$$want" ]; then \
	  for f in $(DIST)/$(PLUGIN)_*; do \
	    case ' $(RELEASE_FILES) ' in *" $$f "*) ;; *) rm -f "$$f" ;; esac; \
	  done; \
	  printf '%s\n' "$$want" >$@; \
	fi

# Prints the path of a vault binary 1.15+, building one once if needed.
vault:
	@scripts/vault-bin.sh

demo: build
	VERSION=$(VERSION) scripts/demo.sh

cluster:
	scripts/cluster.sh

# The benchmarks of a real Vault with the plugin, a null plugin and KV v2
# (about 5 minutes; prints one table), then the in-process Go benchmarks.
# Quicker: make bench BENCH_FLAGS="-duration 2s -scale 1,1000 -tick-window 0"
bench:
	go run ./internal/bench/cmd/bench $(BENCH_FLAGS)
	go test -run '^$$' -bench . -benchmem . ./internal/ermeo | grep -v '^20[0-9][0-9]-'

vet:
	go vet ./... && go vet $(TEST_TAGS) ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

# Every test: unit tests with the race detector, then the e2e tests, which
# start a real vault server (obtained by scripts/vault-bin.sh) with the plugin
# and print the Vault version and their figures (hence -v).
# The steps are TEST_STEPS, run in that order, each by a make of its own; the
# first that fails stops the run, and make test fails with its status. At the
# end, whether the steps passed or one failed, make test prints a table of
# each step run and its wall time in seconds (the failed one marked FAILED),
# and their total. make test TEST_STEPS="fmt-check vet" runs just those.
test: TEST_STEPS := fmt-check vet alerts-test unit models chaos-short fuzz-smoke e2e
test:
	@names=(); secs=(); failed=; \
	report() { \
	  local i total=0; \
	  printf '\n%-12s %8s\n' step seconds; \
	  for i in "$${!names[@]}"; do \
	    printf '%-12s %8d%s\n' "$${names[i]}" "$${secs[i]}" "$$([ "$${names[i]}" = "$$failed" ] && echo '  FAILED')"; \
	    total=$$((total + secs[i])); \
	  done; \
	  printf '%-12s %8d\n' total "$$total"; \
	}; \
	trap report EXIT; \
	for step in $(TEST_STEPS); do \
	  start=$$(date +%s); \
	  $(MAKE) --no-print-directory "$$step"; status=$$?; \
	  names+=("$$step"); secs+=($$(( $$(date +%s) - start ))); \
	  if [ "$$status" -ne 0 ]; then failed=$$step; exit "$$status"; fi; \
	done

# The campaigns run in their own step (chaos-short), with their tables.
CAMPAIGNS := ^(TestChaosCampaign|TestOperatorCampaign|TestConcurrencyCampaign)$$

# Tests build with -tags lockorder: every mutex of the backend is then
# go-deadlock's, and any two locks taken in both orders fail the run
# (locks.go). ERMEO_LOCK_ORDER_REQUIRED makes a build without it fail.
TEST_TAGS := -tags lockorder

unit:
	ERMEO_LOCK_ORDER_REQUIRED=1 go test -race -count=1 $(TEST_TAGS) -skip '$(CAMPAIGNS)|$(MODELS)' $$(go list ./... | grep -v /internal/e2e)

# The consumers' models, on the injected clock: Vault's renewer (Agent, Proxy),
# VSO, ESO and Proxy's concurrent misses, each printing its figures (hence -v,
# without the plugin's log lines). unit skips them.
MODELS := ^(TestVSORenewsCredsLeasesAndRereadsForTheNextToken|TestVSORereadsOfAStaleTokenSendOneGrantPerBackoffStep|TestESOIntervalReadsKeepHalfOfMinTTLInTheSecret|TestESODefaultIntervalHoldsExpiredTokens|TestProxysConcurrentMissesMakeNoCascade)$$
models:
	ERMEO_LOCK_ORDER_REQUIRED=1 go test -race -count=1 $(TEST_TAGS) -v -run '$(MODELS)' . 2>&1 | grep -Ev '^(20[0-9][0-9]-|=== (RUN|PAUSE|CONT))'

# -timeout 40m: the package's tests, the 1-minute soak (TestSoak) and the
# partition test included, take longer than go test's default 10 minutes.
e2e:
	vault="$$(scripts/vault-bin.sh)" && VAULT_BIN="$$vault" ERMEO_E2E_REQUIRED=1 go test -race -count=1 -parallel 8 -timeout 40m -v ./internal/e2e/

# The soak alone, for SOAK (a Go duration, default 30m) on a 3-node cluster
# whose nodes each run in a network namespace of their own (root only):
# kill -9 of nodes and plugin processes, partitions of the active node,
# upstream faults and operator rotations at random, under 50 readers. It
# prints each step and a table, and fails if a chain was lost by the plugin
# or a token used twice. SOAK_SEED=... replays a schedule. The timeout is
# SOAK plus 20 minutes (Go reads "30m20m" as 50m).
# SOAK_FULL_DISK=1 adds full disks (each node's Raft directory on a tmpfs
# filled for 2-6 s): off by default, since Vault's cluster does not always
# recover from one (docs/testing.md, "What we test and how").
SOAK      ?= 30m
SOAK_SEED ?= $(shell date +%s%N)
SOAK_FULL_DISK ?= 0
soak:
	vault="$$(scripts/vault-bin.sh)" && VAULT_BIN="$$vault" ERMEO_E2E_REQUIRED=1 ERMEO_SOAK=$(SOAK) ERMEO_SOAK_SEED=$(SOAK_SEED) ERMEO_SOAK_FULL_DISK=$(SOAK_FULL_DISK) \
	  go test -race -count=1 -timeout $(SOAK)20m -v -run '^TestSoak$$' ./internal/e2e/ | grep -v '^20[0-9][0-9]-'

# The campaigns, each printing its table and its seed:
#   the chaos campaign: randomized schedules of readers, faults, crashes and restarts;
#   the operator campaign: randomized operator requests, valid and invalid, with upstream faults;
#   the concurrency campaign: every entry point at once from many goroutines,
#   with a watchdog for stalls, and the lock order checked.
# `make chaos` runs 5000, 3000 and 300 from a new seed each time
# (CHAOS_SEED=... OPERATOR_SEED=... CONCURRENCY_SEED=... to replay);
# `make test` runs 300, 200 and 20 from fixed seeds (the 10-minute budget), so that it is deterministic
# (the concurrency campaign's goroutines interleave as the scheduler makes
# them: its seed fixes what each does, not when).
CHAOS_SCHEDULES        ?= 5000
OPERATOR_SEQUENCES     ?= 3000
CONCURRENCY_SCHEDULES  ?= 300
CHAOS_SEED             ?= $(shell date +%s%N)
OPERATOR_SEED          ?= $(shell date +%s%N)
CONCURRENCY_SEED       ?= $(shell date +%s%N)
chaos:
	ERMEO_CHAOS_SCHEDULES=$(CHAOS_SCHEDULES) ERMEO_CHAOS_SEED=$(CHAOS_SEED) \
	ERMEO_OPERATOR_SEQUENCES=$(OPERATOR_SEQUENCES) ERMEO_OPERATOR_SEED=$(OPERATOR_SEED) \
	ERMEO_CONCURRENCY_SCHEDULES=$(CONCURRENCY_SCHEDULES) ERMEO_CONCURRENCY_SEED=$(CONCURRENCY_SEED) ERMEO_LOCK_ORDER_REQUIRED=1 \
	go test -race -count=1 $(TEST_TAGS) -timeout 60m -run '$(CAMPAIGNS)' -v . | grep -v '^20[0-9][0-9]-' | grep -v '^    --- PASS\|^=== RUN\|^    .*: read [0-9]'

chaos-short:
	@$(MAKE) --no-print-directory chaos CHAOS_SCHEDULES=300 OPERATOR_SEQUENCES=200 CONCURRENCY_SCHEDULES=20 CHAOS_SEED=20261201 OPERATOR_SEED=20261201 CONCURRENCY_SEED=20261201

FUZZ_TARGETS   := FuzzTokenResponse FuzzErrorResponse
FUZZSECS       ?= 300
empty          :=
space          := $(empty) $(empty)
# -run pattern of exactly the fuzz targets: ^(FuzzTokenResponse|FuzzErrorResponse)$
FUZZ_RUN       := ^($(subst $(space),|,$(strip $(FUZZ_TARGETS))))$$

# Long fuzzing of the Ermeo response parsers; prints each target's execs/sec.
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  echo "== $$t for $(FUZZSECS)s"; \
	  go test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZSECS)s ./internal/ermeo/ >.fuzz-$$t.log 2>&1; st=$$?; \
	  grep -v '^fuzz: elapsed' .fuzz-$$t.log; \
	  awk -v t=$$t -v s=$(FUZZSECS) '/^fuzz: elapsed/ {n=$$5} END {printf "%s: %d execs in %ds, %.0f execs/sec\n", t, n, s, n/s}' .fuzz-$$t.log; \
	  rm -f .fuzz-$$t.log; [ $$st -eq 0 ] || exit $$st; \
	done

# Part of `make test`, and deterministic: the fuzz targets as plain tests, each
# seed and each input of the corpus (internal/ermeo/testdata/fuzz) run once.
# No -fuzz: no new random inputs, so `make test` passes or fails the same way
# every run. `make fuzz` is the open-ended search.
fuzz-smoke:
	go test -count=1 -run '$(FUZZ_RUN)' ./internal/ermeo/

# Rewrites docs/api.md from the backend's schemas. The unit tests fail when
# the committed file differs (TestAPIDocsAreUpToDate, in docs_test.go).
docs:
	ERMEO_UPDATE_DOCS=1 go test -count=1 -run '^TestAPIDocsAreUpToDate$$' .

# The example alert rules (examples/prometheus/ermeo-alerts.yml): promtool
# checks them and runs their unit tests (ermeo-alerts.test.yml), a firing and
# a quiet case for every rule. promtool is the one scripts/promtool-bin.sh
# finds or obtains (PATH, Debian's prometheus package, or built once); one it
# cannot obtain fails the target.
alerts-test:
	promtool="$$(scripts/promtool-bin.sh)" && echo "promtool: $$promtool" && cd examples/prometheus && \
	"$$promtool" check rules ermeo-alerts.yml && "$$promtool" test rules ermeo-alerts.test.yml

clean:
	rm -rf $(BIN) $(DIST) .demo
