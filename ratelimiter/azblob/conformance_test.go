package azblob

import (
	"testing"

	"github.com/ratebatch/batcher/internal/leasetest"
	"github.com/ratebatch/batcher/ratelimiter"
)

// TestConformance runs the LeaseManager conformance suite against Azurite,
// each subtest in its own container, with the other owners' calls made
// through peer Managers on the same container, as other processes would.
// It takes about two minimum lease durations (30 s), and runs alongside
// TestExpiry.
func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for 15 s leases to expire")
	}
	t.Parallel()
	leasetest.Run(t, func(t *testing.T) ratelimiter.LeaseManager {
		return testManager(t, "conformance/")
	}, leasetest.Options{
		MinDuration: MinLeaseDuration,
		// Leases end on time (15.0-15.1 s on Azurite), demands up to 2 s
		// late (whole-second timestamps): the default grace, 3.75 s,
		// covers both.
		Peer: func(t *testing.T, m ratelimiter.LeaseManager) ratelimiter.LeaseManager {
			am := m.(*Manager)
			peer, err := New(am.Client(), &Options{Prefix: am.prefix})
			if err != nil {
				t.Fatal(err)
			}
			return peer
		},
	})
}
