package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ratebatch/batcher/internal/servicetest"
)

// asMain is set in the environment of a test binary that should run as
// bulkload itself: TestMain then calls main with the arguments.
const asMain = "BULKLOAD_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// mainResult is what a bulkload process did.
type mainResult struct {
	stdout, stderr string
	exit           int
	took           time.Duration
}

// runMain runs bulkload as a real process (this test binary, as main) with
// args and the extra environment variables env, and returns all it wrote.
func runMain(t *testing.T, env []string, args ...string) mainResult {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], args...)
	cmd.Env = append(os.Environ(), append([]string{asMain + "=1"}, env...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	r := mainResult{stdout: out.String(), stderr: errOut.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.exit = ee.ExitCode()
	default:
		t.Fatalf("running bulkload: %v", err)
	}
	return r
}

// errorLines returns the lines of stderr that main printed for an error
// (the progress line and the usage excluded).
func errorLines(stderr string) []string {
	var ls []string
	for l := range strings.SplitSeq(stderr, "\n") {
		if strings.HasPrefix(l, "bulkload: ") {
			ls = append(ls, l)
		}
	}
	return ls
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// secretCase is one run of bulkload with a secret in its flags or its
// environment.
type secretCase struct {
	name   string
	secret string // what must never appear; base64-encoded too, where a key is
	args   []string
	env    []string
	exit   int    // the exit status wanted
	line   string // what main's one error line must say, if exit != 0
}

// TestNoSecretInOutput runs bulkload as a real process with a distinctive
// fake secret in every flag, environment variable and address form that
// takes one, against stores that are unreachable and with values that do
// not parse, and checks that no secret appears in anything it writes. Each
// run fails within seconds, with one error line that names the store.
// TestNoSecretInOutputServices does the same against real stores that
// refuse and that accept.
func TestNoSecretInOutput(t *testing.T) {
	runSecretCases(t, []secretCase{
		{"redis unreachable", "S3cretRedis1", []string{"-lease-store", "redis://:S3cretRedis1@127.0.0.1:1"}, nil,
			1, "lease store redis://:REDACTED@127.0.0.1:1: unreachable"},
		{"rediss unreachable", "S3cretRedis3", []string{"-lease-store", "rediss://u:S3cretRedis3@127.0.0.1:1/2"}, nil,
			1, "lease store rediss://u:REDACTED@127.0.0.1:1/2: unreachable"},
		{"redis bad port", "S3cretRedis4", []string{"-lease-store", "redis://:S3cretRedis4@127.0.0.1:port"}, nil,
			2, "-lease-store: lease store redis://:REDACTED@127.0.0.1:port"},
		{"redis bad db", "S3cretRedis5", []string{"-lease-store", "redis://:S3cretRedis5@127.0.0.1:6379/x"}, nil,
			2, "invalid database number"},
		{"redis bad option", "S3cretRedis6", []string{"-lease-store", "redis://:S3cretRedis6@127.0.0.1:6379/?password=S3cretRedis6"}, nil,
			2, "unexpected option"},
		{"etcd unreachable", "S3cretEtcd1", []string{"-lease-store", "etcd://root:S3cretEtcd1@127.0.0.1:1"}, nil,
			1, "lease store etcd://root:REDACTED@127.0.0.1:1: unreachable"},
		{"etcds unreachable", "S3cretEtcd2", []string{"-lease-store", "etcds://root:S3cretEtcd2@127.0.0.1:1"}, nil,
			1, "lease store etcds://root:REDACTED@127.0.0.1:1: unreachable"},
		{"etcd bad port", "S3cretEtcd3", []string{"-lease-store", "etcd://root:S3cretEtcd3@127.0.0.1:x"}, nil,
			2, "-lease-store: lease store etcd://root:REDACTED@127.0.0.1:x"},
		{"blob SAS unreachable", "S3cretSig1", []string{"-lease-store", "http://127.0.0.1:1/acct/leases?sv=2023-11-03&sr=c&sp=rwdl&sig=S3cretSig1"}, nil,
			1, "lease store http://127.0.0.1:1/acct/leases?sv=REDACTED&sr=REDACTED&sp=REDACTED&sig=REDACTED: unreachable"},
		{"storage key unreachable", "S3cretStorageKey", []string{"-lease-store", "http://127.0.0.1:1/leases"}, []string{"AZURE_STORAGE_KEY=" + b64("S3cretStorageKey")},
			1, "lease store http://127.0.0.1:1/leases: unreachable"},
		{"storage key not base64", "S3cretStorageKey!", []string{"-lease-store", "http://127.0.0.1:1/leases"}, []string{"AZURE_STORAGE_KEY=S3cretStorageKey!"},
			1, "$AZURE_STORAGE_KEY"},
		{"cosmos userinfo unreachable", "S3cretCosmos1", []string{"-cosmos-endpoint", "https://u:S3cretCosmos1@127.0.0.1:1/"}, nil,
			1, "cosmos endpoint https://u:REDACTED@127.0.0.1:1/ is unreachable"},
		{"cosmos key unreachable", "S3cretCosmos2", []string{"-cosmos-endpoint", "https://127.0.0.1:1/", "-cosmos-key", b64("S3cretCosmos2")}, nil,
			1, "cosmos endpoint https://127.0.0.1:1/ is unreachable"},
		{"cosmos key not base64", "S3cretCosmos3!", []string{"-cosmos-endpoint", "https://127.0.0.1:1/", "-cosmos-key", "S3cretCosmos3!"}, nil,
			2, "-cosmos-key (hidden): is not a base64 account key"},
		{"cosmos key env unreachable", "S3cretCosmos4", []string{"-cosmos-endpoint", "https://127.0.0.1:1/"}, []string{"COSMOS_KEY=" + b64("S3cretCosmos4")},
			1, "cosmos endpoint https://127.0.0.1:1/ is unreachable"},
		{"cosmos endpoint bad port", "S3cretCosmos6", []string{"-cosmos-endpoint", "https://u:S3cretCosmos6@127.0.0.1:x/"}, nil,
			2, "-cosmos-endpoint https://u:REDACTED@127.0.0.1:x/"},
		{"clickhouse unreachable", "S3cretCH1", []string{"-clickhouse", "clickhouse://default:S3cretCH1@127.0.0.1:1/default"}, nil,
			1, "clickhouse [127.0.0.1:1] is unreachable"},
		{"clickhouse bad dsn", "S3cretCH3", []string{"-clickhouse", "clickhouse://default:S3cretCH3@127.0.0.1:9000/default?dial_timeout=xyz"}, nil,
			2, "-clickhouse clickhouse://default:REDACTED@127.0.0.1:9000/default?dial_timeout=xyz: is not a ClickHouse DSN"},
		{"clickhouse query password", "S3cretCH4", []string{"-clickhouse", "tcp://127.0.0.1:1?username=default&password=S3cretCH4"}, nil,
			1, "clickhouse [127.0.0.1:1] is unreachable"},
	})
}

// TestNoSecretInOutputServices runs bulkload with secrets against a
// private Redis with a password, Azurite, the Cosmos DB API server and
// ClickHouse: stores that refuse the credentials, and ones that accept
// them.
func TestNoSecretInOutputServices(t *testing.T) {
	redisAuth := servicetest.StartRedis(t, "--requirepass", "S3cretRedisRight")
	azurite := servicetest.Need(t, servicetest.Azurite)
	cosmosURL := servicetest.Need(t, servicetest.Cosmos)
	ch := servicetest.Need(t, servicetest.ClickHouse)
	runSecretCases(t, []secretCase{
		{"redis wrong password", "S3cretRedis2", []string{"-lease-store", "redis://default:S3cretRedis2@" + redisAuth.Addr()}, nil,
			1, "lease store redis://default:REDACTED@" + redisAuth.Addr() + ": refused the credentials"},
		{"redis right password", "S3cretRedisRight", []string{"-lease-store", "redis://:S3cretRedisRight@" + redisAuth.Addr(), "-items", "50", "-naive=false"}, nil,
			0, ""},
		{"blob SAS refused", "S3cretSig2", []string{"-lease-store", strings.TrimSuffix(azurite, "/") + "/leases?sv=2023-11-03&se=2030-01-01T00%3A00%3A00Z&sr=c&sp=rwdl&sig=S3cretSig2"}, nil,
			1, "refused the credentials"},
		{"cosmos key env served", "S3cretCosmos5", []string{"-cosmos-endpoint", cosmosURL, "-database", fmt.Sprintf("secret-test-%d", time.Now().UnixNano()), "-items", "20", "-ru", "2000"},
			[]string{"COSMOS_KEY=" + b64("S3cretCosmos5")}, 0, ""},
		{"clickhouse wrong password", "S3cretCH2", []string{"-clickhouse", "clickhouse://default:S3cretCH2@" + ch + "/default"}, nil,
			1, "clickhouse [" + ch + "] refused"},
	})
}

func runSecretCases(t *testing.T, tcs []secretCase) {
	t.Helper()
	// A few at a time: most wait on the network, not the CPU.
	sem := make(chan struct{}, 4)
	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sem <- struct{}{}
			defer func() { <-sem }()
			args := append([]string{"-timeout", "60s", "-chart", "", "-items", "100"}, tc.args...)
			r := runMain(t, tc.env, args...)
			all := r.stdout + r.stderr
			for _, s := range []string{tc.secret, b64(tc.secret)} {
				if strings.Contains(all, s) {
					t.Errorf("the output shows the secret %q:\n%s", s, all)
				}
			}
			if r.exit != tc.exit {
				t.Errorf("exit status %d, want %d:\n%s", r.exit, tc.exit, all)
			}
			if tc.exit == 0 {
				return
			}
			if ls := errorLines(r.stderr); len(ls) != 1 || !strings.Contains(ls[0], tc.line) {
				t.Errorf("error lines %q; want one saying %q", ls, tc.line)
			}
			// Within a few seconds: the store checks take at most 5 s; the
			// rest is starting a process on a busy machine.
			if r.took > 20*time.Second {
				t.Errorf("took %v to fail", r.took)
			}
		})
	}
}

// TestBadFlagOnce checks that a bad flag's error is printed once, with the
// pointer to -h, and exit status 2; -h prints the usage and exits 0.
func TestBadFlagOnce(t *testing.T) {
	r := runMain(t, nil, "-bogus")
	if n := strings.Count(r.stderr, "flag provided but not defined: -bogus"); n != 1 || r.exit != 2 || !strings.Contains(r.stderr, "run 'bulkload -h' for the flags") {
		t.Errorf("-bogus: exit %d, the error %d times:\n%s", r.exit, n, r.stderr)
	}
	r = runMain(t, nil, "-h")
	if r.exit != 0 || !strings.Contains(r.stderr, "Usage: bulkload [flags]") || !strings.Contains(r.stderr, "-lease-store") {
		t.Errorf("-h: exit %d:\n%s", r.exit, r.stderr)
	}
}

// syncBuffer is a bytes.Buffer safe for the writers of a run.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLeaseStoreGoesAway kills the lease store (a private Redis with a
// password) while the Batcher loads and starts it again a few seconds
// later: the load goes on at the reserved capacity meanwhile and finishes,
// every item stored once; stderr says once that the store failed and once
// that it answers again, the progress line shows the outage, and the
// password appears nowhere.
func TestLeaseStoreGoesAway(t *testing.T) {
	const password = "S3cretGoesAway"
	srv := servicetest.StartRedis(t, "--requirepass", password)
	var out, errOut syncBuffer
	done := make(chan error, 1)
	var rep *report
	go func() {
		var err error
		rep, err = run(t.Context(), []string{"-items", "3000", "-ru", "4000", "-other-ru", "0", "-capacity", "3000", "-reserved", "500",
			"-naive=false", "-chart", "", "-lease-store", "redis://:" + password + "@" + srv.Addr() + "/3", "-lease-prefix", fmt.Sprintf("goes-away-%d", time.Now().UnixNano())}, &out, &errOut)
		done <- err
	}()
	// Kill the store once the load is under way, and start it again after
	// three seconds.
	for !strings.Contains(errOut.String(), "batcher ") {
		select {
		case err := <-done:
			t.Fatalf("the run ended before the store went away: %v\n%s\n%s", err, out.String(), errOut.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	all := out.String() + errOut.String()
	if strings.Contains(all, password) {
		t.Errorf("the output shows the password:\n%s", all)
	}
	p := rep.phases[0]
	if p.written != 3000 || p.verified != "all 3,000 items stored, each once" {
		t.Errorf("written %d, verified %q", p.written, p.verified)
	}
	if n := strings.Count(errOut.String(), "failed, using the reserved 500 RU/s until it answers"); n != 1 {
		t.Errorf("said %d times that the store failed, want once:\n%s", n, errOut.String())
	}
	if n := strings.Count(errOut.String(), "answers again"); n != 1 {
		t.Errorf("said %d times that the store answers again, want once:\n%s", n, errOut.String())
	}
	if !strings.Contains(errOut.String(), "(lease store down ") {
		t.Errorf("no progress line shows the outage:\n%s", errOut.String())
	}
	checkSummary(t, rep, out.String())
	t.Logf("\n%s", errOut.String())
}

// TestSummaryAfterTimeout ends a run at its -timeout, mid-load: the run
// fails, and the summary it prints still adds up, with no negative figure.
func TestSummaryAfterTimeout(t *testing.T) {
	var out bytes.Buffer
	rep, err := run(t.Context(), []string{"-items", "2000", "-ru", "1000", "-other-ru", "0", "-naive=false", "-chart", "", "-quiet", "-timeout", "3s"}, &out, io.Discard)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("run: %v, want the deadline\n%s", err, out.String())
	}
	checkSummary(t, rep, out.String())
	t.Logf("\n%s", out.String())
}

// negative finds a negative figure in the summary.
var negative = regexp.MustCompile(`(^|[\s(])-\d`)

// checkSummary checks that a run's figures add up, and that the printed
// summary has no negative figure.
func checkSummary(t *testing.T, rep *report, printed string) {
	t.Helper()
	if rep == nil {
		t.Fatal("no report")
	}
	if l := negative.FindString(printed); l != "" {
		t.Errorf("a negative figure in the summary:\n%s", printed)
	}
	for _, p := range rep.phases {
		completed := p.written == int64(p.items)
		for name, v := range map[string]int64{"written": p.written, "failed": p.failed, "requests": p.requests, "429s": p.throttle, "first": p.first, "resent": p.resent} {
			if v < 0 {
				t.Errorf("%s: %s is %d", p.name, name, v)
			}
		}
		if p.written+p.failed > int64(p.items) {
			t.Errorf("%s: %d written and %d failed of %d items", p.name, p.written, p.failed, p.items)
		}
		if p.written > p.first || p.first > int64(p.items) {
			t.Errorf("%s: %d written, %d sent at least once, of %d items", p.name, p.written, p.first, p.items)
		}
		if completed && p.first != int64(p.items) {
			t.Errorf("%s: a completed run sent %d of %d items", p.name, p.first, p.items)
		}
		if p.throttle > p.requests {
			t.Errorf("%s: %d 429s of %d requests", p.name, p.throttle, p.requests)
		}
		if p.name == "naive" && p.requests != p.first+p.resent {
			t.Errorf("naive: %d requests, but %d items sent and %d retries", p.requests, p.first, p.resent)
		}
		if p.written > 0 && p.requests == 0 {
			t.Errorf("%s: %d written with no request", p.name, p.written)
		}
		sum, peak := 0.0, 0.0
		for _, v := range p.perSec {
			sum += v
			peak = max(peak, v)
		}
		if peak != p.peak {
			t.Errorf("%s: peak %v, but the busiest second has %v", p.name, p.peak, peak)
		}
		if p.server != nil {
			if math.Abs(sum-p.server.RU) > 0.01 {
				t.Errorf("%s: the seconds add up to %v RU, the model served %v", p.name, sum, p.server.RU)
			}
			if p.peak > float64(rep.cfg.ru)+0.01 {
				t.Errorf("%s: %v RU in a second, over the %d provisioned", p.name, p.peak, rep.cfg.ru)
			}
		}
		if u := p.used(rep.cfg); u < 0 || (p.server != nil && u > 1.0001) {
			t.Errorf("%s: capacity used %.4f", p.name, u)
		}
		if mean := p.units / float64(max(len(p.perSec), 1)); mean > p.peak+0.01 {
			t.Errorf("%s: a mean of %v a second, over the busiest second's %v", p.name, mean, p.peak)
		}
	}
}
