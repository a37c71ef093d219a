package sharedsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// A Server is a private lease store for one scenario: a real redis-server,
// etcd or Azurite process on free ports of 127.0.0.1, with its data in its
// own directory, that the scenario can stop (for the store-down figure) and
// start again. Redis keeps its leases across a restart (append-only file),
// etcd too (its data directory); Azurite, in memory, forgets them.
type Server struct {
	Store string // "redis", "etcd" or "azblob"
	Addr  string // what an instance's -addr takes

	dir  string
	argv []string
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartServer starts a private server for store with its data under dir.
// nodeDir is where npm installed azurite (scripts/services.sh's .node).
func StartServer(store, dir, nodeDir string) (*Server, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	p, peer := strconv.Itoa(ports[0]), strconv.Itoa(ports[1])
	s := &Server{Store: store, dir: dir, port: ports[0]}
	switch store {
	case "redis":
		s.Addr = "127.0.0.1:" + p
		s.argv = []string{"redis-server", "--bind", "127.0.0.1", "--port", p, "--dir", dir,
			"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"}
	case "etcd":
		s.Addr = "http://127.0.0.1:" + p
		s.argv = []string{"etcd", "--name", "sim", "--data-dir", filepath.Join(dir, "etcd"), "--log-level", "error",
			"--listen-client-urls", s.Addr, "--advertise-client-urls", s.Addr,
			"--listen-peer-urls", "http://127.0.0.1:" + peer, "--initial-advertise-peer-urls", "http://127.0.0.1:" + peer,
			"--initial-cluster", "sim=http://127.0.0.1:" + peer, "--initial-cluster-state", "new"}
	case "azblob":
		s.Addr = "http://127.0.0.1:" + p + "/devstoreaccount1"
		s.argv = []string{filepath.Join(nodeDir, "node_modules", ".bin", "azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", p,
			"--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose"}
	default:
		return nil, fmt.Errorf("sharedsim: no private server for store %q", store)
	}
	if _, err := exec.LookPath(s.argv[0]); err != nil {
		return nil, fmt.Errorf("sharedsim: %s is not installed (scripts/services.sh up installs it): %w", s.argv[0], err)
	}
	return s, s.Start()
}

// Start starts the server (again) and waits until it serves: until it
// accepts connections, and etcd until it also says it is healthy (has a
// leader).
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	log, err := os.OpenFile(filepath.Join(s.dir, s.Store+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("sharedsim: starting %s: %w", s.Store, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case <-done:
			s.cmd = nil
			return fmt.Errorf("sharedsim: %s exited at start; see %s", s.Store, log.Name())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			if s.Store != "etcd" || etcdHealthy(s.Addr) {
				return nil
			}
		}
	}
	s.killLocked()
	return fmt.Errorf("sharedsim: %s did not answer on %s within 30s", s.Store, addr)
}

// etcdHealthy reports whether etcd at url has a leader and serves
// requests: it accepts connections a while before.
func etcdHealthy(url string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var h struct{ Health string }
	return json.NewDecoder(resp.Body).Decode(&h) == nil && h.Health == "true"
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s) and waits for it
// to exit.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.killLocked()
		return errors.New("sharedsim: " + s.Store + " ignored SIGTERM for 10s; killed")
	}
	s.cmd = nil
	return nil
}

// Close kills the server.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

// freePorts returns n ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitCtx sleeps d or until ctx ends.
func waitCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
