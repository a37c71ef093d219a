package main

import (
	"fmt"
	"time"
)

// A scenario is one row of issue 14's table of figures: a model's
// throughput and how it changes, the figure the loaders are configured with,
// and the windows its targets are measured on. RU figures are at scale 1
// (10,000 RU/s); times at -scale 1 (60 s).
type scenario struct {
	Name  string
	Title string
	// ProvisionedRU is the model's manual throughput at the start.
	ProvisionedRU float64
	// Partitions is the model's physical partitions (0: 1).
	Partitions int
	// LimiterRU is the figure the loaders are configured with: ours' ceiling,
	// the seed-like policy's fixed capacity.
	LimiterRU float64
	// Length is how long the load keeps going at the ideal rate: the items
	// are as many as the loader could write in it.
	Length time.Duration
	// HotShare is the share of the items written to one partition key (S5).
	HotShare float64
	// Changes are made to the model's throughput during the run.
	Changes []change
	// Other is a workload that shares the container, if any.
	Other *otherSpec
	// Discover: ours reads the container's throughput (S7) rather than
	// learning it.
	Discover bool
	// Windows are where the targets are measured.
	Windows []window
	// Target is the target, for the table.
	Target string
}

// A change sets the model's throughput At into the run.
type change struct {
	At                  time.Duration
	ManualRU, AutoMaxRU float64
}

// otherSpec is another workload writing RU per second from From to To.
type otherSpec struct {
	From, To time.Duration
	RU       float64
}

// A window is a stretch of a run whose utilization and 429s are reported:
// from From to To (0: the end of the run).
type window struct {
	Name     string
	From, To time.Duration
}

// settle is how long after a change the targets give ours to follow it.
const settle = 5 * time.Second

// scenarios returns the table's scenarios, their times multiplied by scale.
func scenarios(scale float64) []scenario {
	d := func(s float64) time.Duration { return time.Duration(s * scale * float64(time.Second)) }
	length := d(60)
	return []scenario{
		{Name: "S1", Title: "limiter = provisioned (10,000)", ProvisionedRU: 10000, LimiterRU: 10000, Length: length,
			Windows: []window{{Name: "run"}},
			Target:  "utilization >= 0.95, 429s <= 0.1%"},
		{Name: "S2", Title: "limiter 2x provisioned (20,000 on 10,000)", ProvisionedRU: 10000, LimiterRU: 20000, Length: length,
			Windows: []window{{Name: "from 5s", From: settle}},
			Target:  "from 5s: utilization >= 0.90, 429s <= 1%; completes"},
		{Name: "S3", Title: "limiter 20x provisioned (200,000 on 10,000)", ProvisionedRU: 10000, LimiterRU: 200000, Length: length,
			Windows: []window{{Name: "from 5s", From: settle}},
			Target:  "from 5s: utilization >= 0.90, 429s <= 1%; completes"},
		{Name: "S4", Title: "provisioned 10,000 -> 4,000 at 20s -> 10,000 at 40s", ProvisionedRU: 10000, LimiterRU: 10000, Length: length,
			Changes: []change{{At: d(20), ManualRU: 4000}, {At: d(40), ManualRU: 10000}},
			Windows: []window{{Name: "before", From: settle, To: d(20)}, {Name: "4,000", From: d(20) + settle, To: d(40)}, {Name: "10,000 again", From: d(40) + settle}},
			Target:  "5s after each change: utilization >= 0.85 of the new figure, 429s <= 2%"},
		{Name: "S5", Title: "4 physical partitions, 50% of the writes to one key", ProvisionedRU: 10000, Partitions: 4, LimiterRU: 10000, Length: length, HotShare: 0.5,
			Windows: []window{{Name: "run"}},
			Target:  "completion <= 1.1x ideal; cold partitions never wait on the hot one's pauses"},
		{Name: "S6", Title: "another workload takes 30% from 10s to 30s", ProvisionedRU: 10000, LimiterRU: 10000, Length: length,
			Other:   &otherSpec{From: d(10), To: d(30), RU: 3000},
			Windows: []window{{Name: "while the other writes", From: d(10), To: d(30)}, {Name: "its last 15s", From: d(10) + settle, To: d(30)}},
			Target:  "utilization >= 0.85 of what is left; the other's 429s <= 1%"},
		{Name: "S7", Title: "discovery: manual 10,000, then autoscale max 20,000 at 20s", ProvisionedRU: 10000, LimiterRU: 10000, Length: length, Discover: true,
			Changes: []change{{At: d(20), AutoMaxRU: 20000}},
			Windows: []window{{Name: "manual", To: d(20)}, {Name: "autoscale", From: d(20)}},
			Target:  "capacity read within 1s of start; a change followed within one refresh interval"},
	}
}

// budgetAt returns the model's throughput at t into the run (RU/s, at scale
// 1).
func (s scenario) budgetAt(t time.Duration) float64 {
	b := s.ProvisionedRU
	for _, c := range s.Changes {
		if t >= c.At {
			b = c.ManualRU + c.AutoMaxRU
		}
	}
	return b
}

// availableAt returns what the model would serve the loader at t: its
// throughput less the other workload's rate.
func (s scenario) availableAt(t time.Duration) float64 {
	a := s.budgetAt(t)
	if o := s.Other; o != nil && t >= o.From && t < o.To {
		a -= o.RU
	}
	return a
}

// idealTime returns how long ru RU take at what the model would serve the
// loader (scaled by ruScale), step by step of 10ms.
func (s scenario) idealTime(ru, ruScale float64) time.Duration {
	const step = 10 * time.Millisecond
	var t time.Duration
	for ru > 0 {
		a := s.availableAt(t) * ruScale * step.Seconds()
		if a >= ru {
			return t + time.Duration(ru/a*float64(step))
		}
		ru -= a
		t += step
	}
	return t
}

// availableRU returns what the model would serve the loader from `from` to
// `to` into the run.
func (s scenario) availableRU(from, to time.Duration, ruScale float64) float64 {
	const step = 10 * time.Millisecond
	sum := 0.0
	for t := from; t < to; t += step {
		sum += s.availableAt(t) * ruScale * step.Seconds()
	}
	return sum
}

func findScenario(all []scenario, name string) (scenario, error) {
	for _, s := range all {
		if s.Name == name {
			return s, nil
		}
	}
	return scenario{}, fmt.Errorf("no scenario %q (there are S1 to S7)", name)
}
