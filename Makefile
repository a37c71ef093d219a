# The project's commands. `make test` is what CI runs (.ci/run).

# The Go module proxy alone: its `direct` fallback reaches nothing on our
# machines. A GOPROXY set in the environment wins.
GOPROXY ?= $(shell go env GOPROXY | cut -d, -f1)
export GOPROXY

.PHONY: test bench vet check-format

# Every test, race detector on, three times over: the time-driven tests run on
# synctest's fake clock and must pass every time.
test: check-format vet
	go test -race -count=3 ./...

vet:
	go vet ./...

check-format:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# The benchmark program, whose table the README quotes.
bench:
	go run ./cmd/batchbench
