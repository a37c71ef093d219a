package sharedsim

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ratebatch/batcher/internal/releases"
)

// Config is one scenario's settings.
type Config struct {
	Server    *Server       // the store; Run stops and restarts it
	Binary    string        // the program that runs InstanceMain when SHAREDSIM_INSTANCE=1
	Instances int           // backlogged instances (default 4)
	Shared    int           // shared capacity (default 10,000)
	Reserved  int           // reserved capacity per instance (default 500)
	Factor    int           // partition size (default 1,000)
	Cost      int           // cost of each operation (default 10)
	Lease     time.Duration // lease duration (default 15 s; Azure's least)
	Settle    time.Duration // how long the instances share before the kill (default 12 s)
	Outage    time.Duration // how long the store is down (default 10 s)
	Logf      func(format string, args ...any)
}

func (c *Config) defaults() {
	if c.Instances == 0 {
		c.Instances = 4
	}
	if c.Shared == 0 {
		c.Shared = 10000
	}
	if c.Reserved == 0 {
		c.Reserved = 500
	}
	if c.Factor == 0 {
		c.Factor = 1000
	}
	if c.Cost == 0 {
		c.Cost = 10
	}
	if c.Lease == 0 {
		c.Lease = 15 * time.Second
	}
	if c.Settle == 0 {
		c.Settle = 12 * time.Second
	}
	if c.Outage == 0 {
		c.Outage = 10 * time.Second
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Figures are what a scenario measured.
type Figures struct {
	Store string `json:"store"`
	// The most cost all instances released together in any one-second
	// window, over the whole run, and the bound: shared + reserved x
	// instances.
	PeakWindow int           `json:"peak_window"`
	Limit      int           `json:"limit"`
	PeakAt     time.Duration `json:"peak_at_ns"`
	// Released cost per second while all instances shared, over the
	// bound.
	Utilization float64 `json:"utilization"`
	// Partitions each instance counted once they had settled, and the
	// fair share (shared / factor / instances).
	Settled   []int   `json:"settled_partitions"`
	FairShare float64 `json:"fair_share"`
	// From the first instance's start, alone, until it counted every
	// partition (of a store provisioned beforehand).
	Ramp time.Duration `json:"ramp_ns"`
	// From the SIGKILL of one instance until the others counted every
	// partition.
	KillRecovery time.Duration `json:"kill_recovery_ns"`
	// From the moment the store was told to stop until every instance
	// counted no partition (its reserved capacity only).
	Fallback time.Duration `json:"fallback_ns"`
	// From the store's return (serving requests again) until the
	// instances counted every partition again.
	Recovery time.Duration `json:"recovery_ns"`
	// One-second windows over the bound while the store was down (and
	// over the whole run: see PeakWindow).
	OutageOver int `json:"outage_windows_over"`
	// Times a partition was counted by one instance less than a second
	// after another stopped counting it (as each reported, every 10 ms),
	// with the shortest gap seen between two instances' use of one
	// partition.
	Handoffs   []string      `json:"close_handoffs"`
	MinHandoff time.Duration `json:"min_handoff_ns"`
}

// instance is one child process and what it reported.
type instance struct {
	id   int
	cmd  *exec.Cmd
	done chan struct{}

	mu         sync.Mutex
	ready      time.Time
	partitions int
	history    []sample // partitions over time
	released   []releases.Release
	errors     int
	errLog     []string
	exit       string
}

type sample struct {
	at time.Time
	n  int
	ps []int // the partitions counted from at on
}

func (in *instance) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		at := time.Unix(0, ns)
		val := 0
		if len(f) > 2 {
			val, _ = strconv.Atoi(f[2])
		}
		in.mu.Lock()
		switch f[0] {
		case "READY":
			in.ready = at
		case "R":
			in.released = append(in.released, releases.Release{At: at, Cost: val})
		case "P":
			in.partitions = val
			var ps []int
			if len(f) > 3 {
				for _, x := range strings.Split(f[3], ",") {
					if p, err := strconv.Atoi(x); err == nil {
						ps = append(ps, p)
					}
				}
			}
			in.history = append(in.history, sample{at, val, ps})
		case "E":
			in.errors++
			in.errLog = append(in.errLog, at.Format("15:04:05.000")+" "+strings.Join(f[2:], " "))
		case "DONE":
			in.exit = strings.Join(f[2:], " ")
		}
		in.mu.Unlock()
	}
}

func (in *instance) counted() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.partitions
}

// Run runs the scenario against cfg.Server: one instance alone (the ramp),
// then all of them with a backlog (the shares and the bound), a SIGKILL of
// one (its partitions' return), the store stopped for cfg.Outage and
// started again, and a Shutdown of the rest. It returns the figures; the
// caller judges them.
func Run(ctx context.Context, cfg Config) (Figures, error) {
	cfg.defaults()
	fig := Figures{Store: cfg.Server.Store, Limit: cfg.Shared + cfg.Reserved*cfg.Instances,
		FairShare: float64(cfg.Shared/cfg.Factor) / float64(cfg.Instances)}
	partitions := cfg.Shared / cfg.Factor
	prefix := fmt.Sprintf("sim%d", time.Now().UnixNano())
	flags := instanceFlags{store: cfg.Server.Store, addr: cfg.Server.Addr, prefix: prefix,
		shared: cfg.Shared, reserved: cfg.Reserved, factor: cfg.Factor, cost: cfg.Cost, lease: cfg.Lease}

	var all []*instance
	defer func() {
		for _, in := range all {
			if in.cmd.Process != nil {
				in.cmd.Process.Kill()
			}
			<-in.done
		}
	}()
	spawn := func() (*instance, error) {
		in := &instance{id: len(all), done: make(chan struct{})}
		in.cmd = exec.Command(cfg.Binary, flags.args()...)
		in.cmd.Env = append(os.Environ(), childEnv+"=1")
		in.cmd.Stderr = os.Stderr
		out, err := in.cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := in.cmd.Start(); err != nil {
			return nil, fmt.Errorf("sharedsim: starting instance %d: %w", in.id, err)
		}
		all = append(all, in)
		go func() {
			in.read(out)
			in.cmd.Wait()
			close(in.done)
		}()
		return in, nil
	}
	// until polls cond every 10 ms until it holds, and returns when it
	// first did, or an error after limit.
	until := func(what string, limit time.Duration, cond func() bool) (time.Time, error) {
		deadline := time.Now().Add(limit)
		for !cond() {
			if time.Now().After(deadline) {
				return time.Time{}, fmt.Errorf("sharedsim: %s: not within %v", what, limit)
			}
			if err := waitCtx(ctx, 10*time.Millisecond); err != nil {
				return time.Time{}, err
			}
		}
		return time.Now(), nil
	}
	total := func(ins []*instance) int {
		n := 0
		for _, in := range ins {
			n += in.counted()
		}
		return n
	}

	// The store is provisioned first, as a deployment would do, so that
	// the ramp measures leasing alone.
	mgr, closeMgr, err := NewManager(ctx, flags.store, flags.addr, flags.prefix)
	if err != nil {
		return fig, err
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = mgr.Provision(pctx, partitions)
	cancel()
	closeMgr()
	if err != nil {
		return fig, fmt.Errorf("sharedsim: provisioning %d partitions: %w", partitions, err)
	}

	// 1. One instance alone: the ramp from nothing to every partition.
	first, err := spawn()
	if err != nil {
		return fig, err
	}
	if _, err := until("the first instance starts", 30*time.Second, func() bool {
		first.mu.Lock()
		defer first.mu.Unlock()
		return !first.ready.IsZero()
	}); err != nil {
		return fig, err
	}
	full, err := until("one instance reaches every partition", 10*time.Second, func() bool { return first.counted() == partitions })
	if err != nil {
		return fig, err
	}
	first.mu.Lock()
	fig.Ramp = full.Sub(first.ready)
	first.mu.Unlock()
	cfg.Logf("%s: one instance had all %d partitions %v after it started", fig.Store, partitions, fig.Ramp)

	// 2. All of them, backlogged: the shares.
	for range cfg.Instances - 1 {
		if _, err := spawn(); err != nil {
			return fig, err
		}
	}
	shareStart := time.Now()
	if err := waitCtx(ctx, cfg.Settle); err != nil {
		return fig, err
	}
	for _, in := range all {
		fig.Settled = append(fig.Settled, in.counted())
	}
	shareEnd := time.Now()
	cfg.Logf("%s: %d instances settled at %v partitions", fig.Store, cfg.Instances, fig.Settled)

	// 3. SIGKILL one: its partitions go to the others when its leases end.
	victim := all[len(all)-1]
	victim.cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	victim.mu.Lock()
	victim.history = append(victim.history, sample{at: killed}) // it counts nothing from here
	victim.mu.Unlock()
	rest := all[:len(all)-1]
	back, err := until("the others take the killed instance's partitions", cfg.Lease+10*time.Second, func() bool { return total(rest) == partitions })
	if err != nil {
		return fig, err
	}
	fig.KillRecovery = back.Sub(killed)
	cfg.Logf("%s: the others had every partition %v after the SIGKILL", fig.Store, fig.KillRecovery)
	if err := waitCtx(ctx, 2*time.Second); err != nil {
		return fig, err
	}

	// 4. The store down: every instance falls back to its reserved
	// capacity, and recovers when it returns.
	down := time.Now()
	if err := cfg.Server.Stop(); err != nil {
		return fig, err
	}
	fell, err := until("every instance falls back to its reserved capacity", 10*time.Second, func() bool { return total(rest) == 0 })
	if err != nil {
		return fig, err
	}
	fig.Fallback = fell.Sub(down)
	if err := waitCtx(ctx, time.Until(down.Add(cfg.Outage))); err != nil {
		return fig, err
	}
	if err := cfg.Server.Start(); err != nil {
		return fig, err
	}
	up := time.Now()
	recovered, err := until("the instances count every partition again", 30*time.Second, func() bool { return total(rest) == partitions })
	if err != nil {
		return fig, err
	}
	fig.Recovery = recovered.Sub(up)
	cfg.Logf("%s: store down %v: fell back after %v, recovered %v after it returned", fig.Store, up.Sub(down), fig.Fallback, fig.Recovery)
	if os.Getenv("SHAREDSIM_DEBUG") != "" {
		in := rest[0]
		in.mu.Lock()
		cfg.Logf("down %s up %s", down.Format("15:04:05.000"), up.Format("15:04:05.000"))
		for _, e := range in.errLog {
			cfg.Logf("E %s", e)
		}
		for _, h := range in.history {
			if h.at.After(down) {
				cfg.Logf("P %s %d", h.at.Format("15:04:05.000"), h.n)
			}
		}
		in.mu.Unlock()
	}
	if err := waitCtx(ctx, 2*time.Second); err != nil {
		return fig, err
	}

	// 5. Shutdown: each drains and releases its leases.
	for _, in := range rest {
		in.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, in := range rest {
		select {
		case <-in.done:
		case <-time.After(60 * time.Second):
			return fig, fmt.Errorf("sharedsim: instance %d did not exit within 60s of SIGTERM", in.id)
		}
		in.mu.Lock()
		exit := in.exit
		in.mu.Unlock()
		if exit != "ok" {
			return fig, fmt.Errorf("sharedsim: instance %d: Shutdown said %q", in.id, exit)
		}
	}

	// The releases of all of them together.
	var rs []releases.Release
	for _, in := range all {
		in.mu.Lock()
		rs = append(rs, in.released...)
		in.mu.Unlock()
	}
	slices.SortFunc(rs, func(a, b releases.Release) int { return a.At.Compare(b.At) })
	peak, at := releases.MaxWindow(rs, time.Second)
	fig.PeakWindow, fig.PeakAt = peak, at.Sub(first.ready)
	from := shareStart.Add(3 * time.Second) // once the newcomers have their shares
	fig.Utilization = float64(releases.Between(rs, from, shareEnd)) / shareEnd.Sub(from).Seconds() / float64(fig.Limit)
	fig.Handoffs, fig.MinHandoff = handoffs(all)
	if peak > fig.Limit {
		// Say what made the worst window: each instance's releases in it,
		// and what it counted meanwhile.
		for _, in := range all {
			in.mu.Lock()
			got := releases.Between(in.released, at, at.Add(time.Second))
			var counted []string
			for i, h := range in.history {
				end := time.Now()
				if i+1 < len(in.history) {
					end = in.history[i+1].at
				}
				if end.After(at.Add(-time.Second)) && h.at.Before(at.Add(time.Second)) {
					counted = append(counted, fmt.Sprintf("%s:%v", h.at.Format("05.000"), h.ps))
				}
			}
			in.mu.Unlock()
			cfg.Logf("over the bound at %s: instance %d released %d; counted %s", at.Format("15:04:05.000"), in.id, got, strings.Join(counted, " "))
		}
	}
	var during []releases.Release
	for _, r := range rs {
		if !r.At.Before(down) && r.At.Before(up.Add(time.Second)) {
			during = append(during, r)
		}
	}
	for i := range during {
		if releases.Between(during, during[i].At, during[i].At.Add(time.Second)) > fig.Limit {
			fig.OutageOver++
		}
	}
	return fig, nil
}

// String formats the figures as the table rows the README quotes.
func (f Figures) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-7s peak 1 s window %6d / limit %d (%.3f)\n", f.Store, f.PeakWindow, f.Limit, float64(f.PeakWindow)/float64(f.Limit))
	fmt.Fprintf(&b, "%-7s utilization while shared     %.3f\n", f.Store, f.Utilization)
	fmt.Fprintf(&b, "%-7s settled partitions           %v (fair share %.2f)\n", f.Store, f.Settled, f.FairShare)
	fmt.Fprintf(&b, "%-7s one instance to all          %v\n", f.Store, f.Ramp.Round(time.Millisecond))
	fmt.Fprintf(&b, "%-7s kill -9 to others using them %v\n", f.Store, f.KillRecovery.Round(time.Millisecond))
	fmt.Fprintf(&b, "%-7s store down: fell back after  %v, recovered %v after it returned, %d windows over\n",
		f.Store, f.Fallback.Round(time.Millisecond), f.Recovery.Round(time.Millisecond), f.OutageOver)
	fmt.Fprintf(&b, "%-7s shortest handoff             %v (%d under 1s)\n", f.Store, f.MinHandoff.Round(time.Millisecond), len(f.Handoffs))
	return b.String()
}

// handoffs returns every time one instance began counting a partition less
// than a second after another stopped, and the shortest gap between two
// instances' counting of one partition.
func handoffs(all []*instance) (close []string, shortest time.Duration) {
	type span struct {
		who      int
		from, to time.Time
	}
	spans := map[int][]span{} // partition -> who counted it when
	for _, in := range all {
		in.mu.Lock()
		h := in.history
		end := time.Now()
		for i, s := range h {
			to := end
			if i+1 < len(h) {
				to = h[i+1].at
			}
			for _, p := range s.ps {
				spans[p] = append(spans[p], span{in.id, s.at, to})
			}
		}
		in.mu.Unlock()
	}
	shortest = -1
	for p, ss := range spans {
		for _, a := range ss {
			for _, b := range ss {
				if a.who == b.who || b.from.Before(a.from) {
					continue
				}
				gap := b.from.Sub(a.to)
				if shortest < 0 || gap < shortest {
					shortest = gap
				}
				if gap < time.Second {
					close = append(close, fmt.Sprintf("partition %d: instance %d counted it %v after instance %d stopped (at %s)",
						p, b.who, gap, a.who, b.from.Format("15:04:05.000")))
				}
			}
		}
	}
	return close, shortest
}
