package cosmosmodel

import (
	"slices"
	"testing"
	"time"
)

func TestCharges(t *testing.T) {
	const KB = 1024
	tests := []struct {
		size        int
		read, write float64
	}{
		{0, 1, 5.71},
		{100, 1, 5.71},
		{KB, 1, 5.71}, // Azure: a 1 KB point read is 1 RU; a 1 KB write about 5
		{KB + KB/2, 1.05, 5.93},
		{2 * KB, 1.1, 6.15},
		{4 * KB, 1.3, 7.03}, // Azure's capacity table: 1.3 and 7
		{10 * KB, 1.9, 9.67},
		{64 * KB, 7.3, 33.43},
		{100 * KB, 10.9, 49.27}, // Azure: 10 RU read, about 50 RU write
		{2 * KB * KB, 205.7, 906.39},
	}
	for _, tt := range tests {
		if got := ReadCharge(tt.size); got != tt.read {
			t.Errorf("ReadCharge(%d) = %v, want %v", tt.size, got, tt.read)
		}
		if got := WriteCharge(tt.size); got != tt.write {
			t.Errorf("WriteCharge(%d) = %v, want %v", tt.size, got, tt.write)
		}
	}
	if got := QueryCharge(0, 0); got != QueryBaseCharge {
		t.Errorf("QueryCharge(0, 0) = %v, want %v", got, QueryBaseCharge)
	}
	if got := QueryCharge(100, 100*KB); got != 2.83+1+10 {
		t.Errorf("QueryCharge(100, 100 KB) = %v, want 13.83", got)
	}
}

// TestMeterSteps drives the meter through a table of explicit times.
func TestMeterSteps(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	m := newMeter(t0, 1, 20, 0)
	steps := []struct {
		at     time.Duration
		charge float64
		ok     bool
		after  time.Duration // for refusals
	}{
		{0, 5.71, true, 0},
		{100 * ms, 5.71, true, 0},
		{200 * ms, 5.71, true, 0},          // 17.13
		{300 * ms, 5.71, false, 700 * ms},  // 22.84 > 20
		{300 * ms, 2.87, true, 0},          // exactly 20.00
		{999 * ms, 0.01, false, 1 * ms},    // the window is spent
		{1000 * ms, 5.71, true, 0},         // a new window
		{1500 * ms, 30, false, 500 * ms},   // more than the budget, into a window that served
		{2000 * ms, 30, true, 0},           // ... admitted into an empty one
		{2001 * ms, 1, false, 999 * ms},    // and that window is over budget
		{5250 * ms, 20, true, 0},           // after idle seconds
		{5250 * ms, 0.01, false, 750 * ms}, // the boundary holds to the hundredth
	}
	for i, s := range steps {
		sec, ok, after := m.admit(t0.Add(s.at), 0, s.charge)
		if ok != s.ok || after != s.after || sec != int(s.at/time.Second) {
			t.Errorf("step %d (at %v, %v RU): second %d, ok %v, retry after %v; want second %d, %v, %v",
				i, s.at, s.charge, sec, ok, after, s.at/time.Second, s.ok, s.after)
		}
	}
	m.adjust(1, 0, -0.71) // the first write of second 1 cost 5.00 after all
	want := []Second{
		{At: 0, RU: 20, Requests: 6, Throttled: 2, BudgetRU: 20},
		{At: 1 * time.Second, RU: 5, Requests: 2, Throttled: 1, BudgetRU: 20},
		{At: 2 * time.Second, RU: 30, Requests: 2, Throttled: 1, BudgetRU: 20},
		{At: 3 * time.Second, BudgetRU: 20},
		{At: 4 * time.Second, BudgetRU: 20},
		{At: 5 * time.Second, RU: 20, Requests: 2, Throttled: 1, BudgetRU: 20},
		{At: 6 * time.Second, BudgetRU: 20},
	}
	if got := m.history(t0.Add(6500*ms), -1); !slices.Equal(got, want) {
		t.Errorf("history:\n got %v\nwant %v", got, want)
	}
	st := m.stats(t0.Add(6500 * ms))
	if st.RU != 75 || st.PeakRU != 30 || st.Requests != 12 || st.Throttled != 5 || st.ProvisionedRU != 20 || st.Elapsed != 6500*ms {
		t.Errorf("stats: %+v", st)
	}
}

func TestMeterUnlimited(t *testing.T) {
	t0 := time.Now()
	m := newMeter(t0, 1, 0, 0)
	for i := range 1000 {
		if _, ok, _ := m.admit(t0.Add(time.Duration(i)*time.Microsecond), 0, 1000); !ok {
			t.Fatalf("request %d refused without a limit", i)
		}
	}
	if st := m.stats(t0); st.RU != 1e6 || st.Throttled != 0 {
		t.Errorf("stats: %+v", st)
	}
}

func TestMeterHistoryBounded(t *testing.T) {
	t0 := time.Now()
	m := newMeter(t0, 1, 10, 0)
	m.admit(t0.Add(3*maxHistory*time.Second), 0, 1)
	h := m.history(t0.Add(3*maxHistory*time.Second), -1)
	if len(h) > maxHistory || h[len(h)-1].At != 3*maxHistory*time.Second || h[len(h)-1].RU != 1 {
		t.Errorf("history of %d seconds, last %+v", len(h), h[len(h)-1])
	}
	// A request timed before the oldest second kept is charged to it.
	m.admit(t0, 0, 1)
	if st := m.stats(t0); st.RU != 2 {
		t.Errorf("RU %v, want 2", st.RU)
	}
}
