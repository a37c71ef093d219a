package servicetest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// How long a private server may take to answer after it is started, and to
// exit after Stop asks it to.
const (
	startTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
)

// A Server is a private instance of a real server (ClickHouse, Redis) that
// one test starts on its own free port, with its own data in a temporary
// directory, so that it can stop, kill and restart it without disturbing the
// shared services that other packages' tests use at the same time.
//
// Start one with StartRedis or StartClickHouse; it is killed, and its
// directory removed, when the test ends. Its data survive Stop, Kill and a
// later Start, as a real server's would. The methods are safe for concurrent
// use and may be called from any goroutine: they return errors rather than
// failing the test.
type Server struct {
	name     string   // "redis", "clickhouse"
	addr     string   // host:port of the main protocol
	httpAddr string   // host:port of ClickHouse's HTTP interface
	dir      string   // the server's own directory
	logFile  string   // where its output goes
	argv     []string // the command that runs it
	ready    func(ctx context.Context) error

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// StartRedis starts a private redis-server on a free port of 127.0.0.1 and
// returns once it answers PING. Its data are kept in an append-only file
// synced at every write (appendfsync always), so a key whose write was
// acknowledged before Stop or Kill is there after Start; with everysec a
// SIGKILL can lose up to a second of acknowledged writes.
//
// Extra arguments go on redis-server's command line after the others, such
// as "--requirepass", "secret" (the readiness check then authenticates
// with that password).
//
// If redis-server is not installed, the test fails when the services are
// required (see Required) and is skipped otherwise.
func StartRedis(t testing.TB, extra ...string) *Server {
	t.Helper()
	bin := lookPath(t, "redis-server")
	dir := t.TempDir()
	password := ""
	for i, a := range extra {
		if a == "--requirepass" && i+1 < len(extra) {
			password = extra[i+1]
		}
	}
	return start(t, func(ports []int) *Server {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		return &Server{
			name:    "redis",
			addr:    addr,
			dir:     dir,
			logFile: filepath.Join(dir, "redis.log"),
			argv: append([]string{bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(ports[0]),
				"--dir", dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always",
				"--daemonize", "no"}, extra...),
			ready: func(ctx context.Context) error { return pingRedis(ctx, addr, password) },
		}
	}, 1)
}

// StartClickHouse starts a private clickhouse-server on free ports of
// 127.0.0.1, configured from the packaged /etc/clickhouse-server/config.xml
// and users.xml with every path moved into a temporary directory, and returns
// once it answers on its HTTP interface. Addr is its native-protocol address,
// HTTPAddr its HTTP one.
//
// If clickhouse-server or its packaged configuration is missing, the test
// fails when the services are required (see Required) and is skipped
// otherwise.
func StartClickHouse(t testing.TB) *Server {
	t.Helper()
	bin := lookPath(t, "clickhouse-server")
	const etc = "/etc/clickhouse-server"
	config, err := os.ReadFile(filepath.Join(etc, "config.xml"))
	if err != nil {
		missing(t, "clickhouse-server's packaged config", err)
	}
	users, err := os.ReadFile(filepath.Join(etc, "users.xml"))
	if err != nil {
		missing(t, "clickhouse-server's packaged users.xml", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "users.xml"), users, 0o644); err != nil {
		t.Fatal(err)
	}
	return start(t, func(ports []int) *Server {
		tcp, http, inter := strconv.Itoa(ports[0]), strconv.Itoa(ports[1]), strconv.Itoa(ports[2])
		c := strings.NewReplacer(
			"/var/lib/clickhouse/", dir+"/data/",
			"/var/log/clickhouse-server/", dir+"/log/",
			"<tcp_port>9000</tcp_port>", "<tcp_port>"+tcp+"</tcp_port>\n    <listen_host>127.0.0.1</listen_host>",
			"<http_port>8123</http_port>", "<http_port>"+http+"</http_port>",
			"<interserver_http_port>9009</interserver_http_port>", "<interserver_http_port>"+inter+"</interserver_http_port>",
		).Replace(string(config))
		path := filepath.Join(dir, "config.xml")
		if err := os.WriteFile(path, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		httpAddr := net.JoinHostPort("127.0.0.1", http)
		return &Server{
			name:     "clickhouse",
			addr:     net.JoinHostPort("127.0.0.1", tcp),
			httpAddr: httpAddr,
			dir:      dir,
			logFile:  filepath.Join(dir, "log", "clickhouse-server.err.log"),
			argv:     []string{bin, "--config-file=" + path},
			ready:    func(ctx context.Context) error { return pingClickHouse(ctx, httpAddr) },
		}
	}, 3)
}

// start picks nports free ports, builds the server with them and starts it,
// trying new ports if the first ones were taken in the meantime. The server
// is killed when the test ends.
func start(t testing.TB, build func(ports []int) *Server, nports int) *Server {
	t.Helper()
	var err error
	for range 3 {
		var ports []int
		ports, err = freePorts(nports)
		if err != nil {
			break
		}
		s := build(ports)
		if err = s.Start(); err == nil {
			t.Cleanup(func() {
				if err := s.Kill(); err != nil {
					t.Errorf("servicetest: %v", err)
				}
			})
			return s
		}
	}
	t.Fatalf("servicetest: %v", err)
	return nil
}

// Addr returns the server's address (host:port): Redis's, or ClickHouse's
// native protocol.
func (s *Server) Addr() string { return s.addr }

// HTTPAddr returns ClickHouse's HTTP address (host:port); "" for Redis.
func (s *Server) HTTPAddr() string { return s.httpAddr }

// Dir returns the server's own directory: its configuration, data and logs.
func (s *Server) Dir() string { return s.dir }

// Running reports whether the server's process is running.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runningLocked()
}

func (s *Server) runningLocked() bool {
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Start starts the server, on the same port and with the same data as
// before, and returns once it answers; it does nothing if the server is
// running. It returns an error, with the tail of the server's log, if the
// server exits or does not answer within a minute.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runningLocked() {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(s.dir, "log"), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(filepath.Join(s.dir, "log", "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("%s: %w", s.name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		out.Close()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		err := s.ready(rctx)
		rcancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("%s on %s exited while starting (%v)%s", s.name, s.addr, cmd.ProcessState, s.logTail())
		case <-ctx.Done():
			s.killLocked()
			return fmt.Errorf("%s on %s did not answer within %v: %v%s", s.name, s.addr, startTimeout, err, s.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop stops the server gracefully (SIGTERM) and waits for it to exit,
// killing it if it takes more than 30 seconds. It does nothing if the server
// is not running.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.runningLocked() {
		return nil
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: stop: %w", s.name, err)
	}
	select {
	case <-s.done:
		return nil
	case <-time.After(stopTimeout):
		s.killLocked()
		return fmt.Errorf("%s on %s did not stop within %v after SIGTERM; killed it", s.name, s.addr, stopTimeout)
	}
}

// Kill kills the server (SIGKILL), as a crash would, and waits for it to
// exit. It does nothing if the server is not running.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
	return nil
}

func (s *Server) killLocked() {
	if !s.runningLocked() {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
}

// logTail returns the last lines of the server's logs, for error messages.
func (s *Server) logTail() string {
	var b strings.Builder
	for _, f := range []string{filepath.Join(s.dir, "log", "stdout.log"), s.logFile} {
		data, err := os.ReadFile(f)
		if err != nil || len(data) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		lines = lines[max(0, len(lines)-15):]
		fmt.Fprintf(&b, "\n--- %s:\n%s", f, strings.Join(lines, "\n"))
	}
	return b.String()
}

func lookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if p, err = exec.LookPath(filepath.Join("/usr/sbin", name)); err != nil {
			missing(t, name, err)
		}
	}
	return p
}

func missing(t testing.TB, what string, err error) {
	t.Helper()
	if Required() {
		t.Fatalf("%s is missing, and the test command started the services (BATCHER_SERVICES=1): %v", what, err)
	}
	t.Skipf("skipped: needs %s (%v); scripts/services.sh up installs it", what, err)
}

// freePorts returns n distinct ports of 127.0.0.1 that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("no free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// pingRedis sends PING, after AUTH with password if it is not empty.
func pingRedis(ctx context.Context, addr, password string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	r := bufio.NewReader(c)
	if password != "" {
		if _, err := fmt.Fprintf(c, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(password), password); err != nil {
			return err
		}
		if line, err := r.ReadString('\n'); err != nil {
			return err
		} else if line != "+OK\r\n" {
			return errors.New("redis refused AUTH")
		}
	}
	if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("redis answered %q to PING", strings.TrimSpace(line))
	}
	return nil
}

func pingClickHouse(ctx context.Context, httpAddr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/ping", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
	if !bytes.HasPrefix(body, []byte("Ok")) {
		return fmt.Errorf("clickhouse answered %q to /ping", body)
	}
	return nil
}
