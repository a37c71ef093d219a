package analytics_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/samples/analytics"
)

// The session logic applied in any order, with redeliveries, from two
// clients at once, releases each event once with the right duration.
func TestSessionsAnyOrder(t *testing.T) {
	addr := servicetest.Need(t, servicetest.Redis)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	s := analytics.NewSessions(rdb, fmt.Sprintf("test-session-%d:", rand.Uint64()), time.Minute)
	const sessions = 50
	var events []analytics.Event
	for i := range sessions {
		for seq := 1; seq <= eventsPerSession; seq++ {
			events = append(events, eventOf(i, seq))
		}
	}
	// Shuffled, and a third of them twice.
	events = append(events, events[:len(events)/3]...)
	rand.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
	released := map[uint64]analytics.Event{}
	for i := 0; i < len(events); i += 7 {
		rows, err := s.Apply(t.Context(), events[i:min(i+7, len(events))])
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if prev, ok := released[r.ID]; ok && prev != r {
				t.Fatalf("event %d released twice, differently: %+v and %+v", r.ID, prev, r)
			}
			released[r.ID] = r
		}
	}
	if len(released) != sessions*eventsPerSession {
		t.Fatalf("released %d events, want %d", len(released), sessions*eventsPerSession)
	}
	for _, r := range released {
		if r.Name == analytics.ScreenView && r.DurationMs != wantDuration(r.Seq) {
			t.Errorf("screen_view %d (seq %d) has duration %d, want %d", r.ID, r.Seq, r.DurationMs, wantDuration(r.Seq))
		}
	}
}
