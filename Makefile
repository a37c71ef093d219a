# The project's commands. `make test` is what CI runs (.ci/run).

# The Go module proxy alone: its `direct` fallback reaches nothing on our
# machines. A GOPROXY set in the environment wins.
GOPROXY ?= $(shell go env GOPROXY | cut -d, -f1)
export GOPROXY

.PHONY: test test-short services-up services-down services-status services-test bench vet staticcheck check-format

# Every test, race detector on, three times over, against the real services
# (ClickHouse, the Cosmos DB API server, Azurite, Redis, etcd), which
# scripts/services.sh installs and starts if they are not already running.
# BATCHER_SERVICES=1 makes a test whose service is unreachable fail rather
# than skip. The time-driven tests run on synctest's fake clock and must pass
# every time.
test: check-format vet staticcheck services-up services-test
	BATCHER_SERVICES=1 go test -race -count=3 ./...

# The unit tests alone, without services: tests that need one skip, saying why.
test-short: check-format vet
	go test -race ./...

services-up:
	scripts/services.sh up

# Stops only what services-up started.
services-down:
	scripts/services.sh down

services-status:
	scripts/services.sh status

# The tests of scripts/services.sh: waiting for another apt-get's lock (they
# hold the real dpkg lock for a few seconds; root needed), and `up` leaving
# running services alone, quickly.
services-test:
	BATCHER_SERVICES=1 scripts/services_test.sh

vet:
	go vet ./...

# staticcheck at a fixed version, built by `go run` from the module proxy
# (it is no dependency of the module). The first run downloads and builds it
# (minutes on two busy cores); later runs take seconds.
STATICCHECK_VERSION = v0.8.2
staticcheck:
	go run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

check-format:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# The benchmark program, whose table the README quotes.
bench:
	go run ./cmd/batchbench
