package azblob

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/lease"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/ratebatch/batcher/internal/servicetest"
	"github.com/ratebatch/batcher/ratelimiter"
)

// testContainer returns a client for a fresh container on Azurite, named
// after the test, that does not exist yet and is deleted when the test
// ends.
func testContainer(t *testing.T) *container.Client {
	t.Helper()
	base := servicetest.Need(t, servicetest.Azurite)
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	if len(name) > 40 {
		name = strings.TrimRight(name[:40], "-")
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	name = "t-" + name + "-" + hex.EncodeToString(rnd[:])

	cred, err := container.NewSharedKeyCredential(servicetest.AzuriteAccount, servicetest.AzuriteKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := container.NewClientWithSharedKeyCredential(strings.TrimSuffix(base, "/")+"/"+name, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Delete(ctx, nil); err != nil && !bloberror.HasCode(err, bloberror.ContainerNotFound) {
			t.Errorf("deleting container %s: %v", name, err)
		}
	})
	return c
}

// testManager returns a Manager on a fresh container, with prefix.
func testManager(t *testing.T, prefix string) *Manager {
	t.Helper()
	m, err := New(testContainer(t), &Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func wantErrIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got %v, want an error wrapping %v", what, err, target)
	}
}

func wantNil(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestLeaseID(t *testing.T) {
	guid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]string{}
	for _, owner := range []string{"a", "b", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "ünïcode owner", strings.Repeat("x", 10000)} {
		id := LeaseID(owner)
		if !guid.MatchString(id) {
			t.Errorf("LeaseID(%.20q) = %q, not a lowercase version-8 GUID", owner, id)
		}
		if again := LeaseID(owner); again != id {
			t.Errorf("LeaseID(%.20q) = %q, then %q", owner, id, again)
		}
		if prev, ok := seen[id]; ok {
			t.Errorf("LeaseID(%.20q) = LeaseID(%.20q) = %q", owner, prev, id)
		}
		seen[id] = owner
	}
	// Pinned, so that a change (which would strand leases held across an
	// upgrade) is noticed.
	if got, want := LeaseID("owner-1"), "7f48b68d-4892-8183-bba5-990d31b567da"; got != want {
		t.Errorf("LeaseID(owner-1) = %q, want %q", got, want)
	}
}

func TestLeaseSeconds(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want int32 // 0: an error
	}{
		{-time.Second, 0},
		{0, 0},
		{10 * time.Second, 0},
		{14 * time.Second, 0},
		{14*time.Second + time.Nanosecond, 15},
		{15 * time.Second, 15},
		{30*time.Second + 1, 31},
		{60 * time.Second, 60},
		{60*time.Second + time.Nanosecond, 0},
		{61 * time.Second, 0},
		{1 << 62, 0},
	} {
		got, err := leaseSeconds(tc.d)
		if tc.want == 0 {
			if err == nil {
				t.Errorf("leaseSeconds(%v) = %d, want an error", tc.d, got)
			} else if !strings.Contains(err.Error(), tc.d.String()) || !strings.Contains(err.Error(), "15s") || !strings.Contains(err.Error(), "1m0s") {
				t.Errorf("leaseSeconds(%v): error %q does not name the duration and the range", tc.d, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("leaseSeconds(%v) = %d, %v; want %d", tc.d, got, err, tc.want)
		}
	}
}

func TestHeldEncoding(t *testing.T) {
	for _, tc := range []struct {
		held []int
		want string
	}{
		{nil, ""},
		{[]int{5}, "5"},
		{[]int{0, 1, 2, 3, 7, 9, 10}, "0-3,7,9-10"},
		{[]int{1, 3, 5}, "1,3,5"},
		{[]int{0, 1}, "0-1"},
	} {
		got := encodeHeld(tc.held)
		if got != tc.want {
			t.Errorf("encodeHeld(%v) = %q, want %q", tc.held, got, tc.want)
		}
		back, err := decodeHeld(got)
		if err != nil || !slices.Equal(back, tc.held) {
			t.Errorf("decodeHeld(%q) = %v, %v; want %v", got, back, err, tc.held)
		}
	}
	for _, bad := range []string{"x", "1-", "-1", "3-1", "1,,2", "0-99999999"} {
		if got, err := decodeHeld(bad); err == nil {
			t.Errorf("decodeHeld(%q) = %v, want an error", bad, got)
		}
	}
}

func TestOptions(t *testing.T) {
	c, err := container.NewClientWithNoCredential("http://127.0.0.1:10000/devstoreaccount1/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(nil, nil); err == nil {
		t.Error("New(nil, nil) succeeded")
	}
	_, err = New(c, &Options{ClientOptions: &container.ClientOptions{}, ProvisionConcurrency: -1, Prefix: strings.Repeat("p", 961)})
	if err == nil {
		t.Fatal("New with three bad options succeeded")
	}
	for _, s := range []string{"ClientOptions", "ProvisionConcurrency", "Prefix"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
	m, err := New(c, nil)
	if err != nil || m.concurrency != DefaultProvisionConcurrency {
		t.Fatalf("New(c, nil) = %+v, %v", m, err)
	}
	// The convenience constructors hand ClientOptions to the SDK.
	if _, err := NewWithSharedKey("http://127.0.0.1:10000/devstoreaccount1/x", servicetest.AzuriteAccount, servicetest.AzuriteKey, &Options{ClientOptions: &container.ClientOptions{}}); err != nil {
		t.Errorf("NewWithSharedKey with ClientOptions: %v", err)
	}
	if _, err := NewWithSharedKey("http://127.0.0.1:10000/devstoreaccount1/x", "a", "not base64!", nil); err == nil {
		t.Error("NewWithSharedKey with a bad key succeeded")
	}
	if _, err := NewWithCredential("http://127.0.0.1:10000/devstoreaccount1/x", nil, nil); err == nil {
		t.Error("NewWithCredential with a nil credential succeeded")
	}
}

func TestAcquireRenewRelease(t *testing.T) {
	ctx := t.Context()
	m := testManager(t, "")
	const d = 15 * time.Second
	wantNil(t, "Provision(4)", m.Provision(ctx, 4))

	start := time.Now()
	wantNil(t, "A acquires p0", m.Acquire(ctx, 0, "A", d))
	t.Logf("one acquire took %v", time.Since(start))
	wantNil(t, "A acquires p0 again", m.Acquire(ctx, 0, "A", d))
	err := m.Acquire(ctx, 0, "B", d)
	wantErrIs(t, "B acquires p0", err, ratelimiter.ErrLeaseHeld)
	if !bloberror.HasCode(err, bloberror.LeaseAlreadyPresent) || !strings.Contains(err.Error(), "partition 0") {
		t.Errorf("B acquires p0: %v; want LeaseAlreadyPresent and the partition named", err)
	}
	err = m.Renew(ctx, 0, "B", d)
	wantErrIs(t, "B renews A's lease", err, ratelimiter.ErrLeaseLost)
	t.Logf("renewing another owner's lease: %v", err)
	wantNil(t, "A renews", m.Renew(ctx, 0, "A", d))
	wantNil(t, "B releases A's lease", m.Release(ctx, 0, "B"))
	wantErrIs(t, "B acquires after its release of A's lease", m.Acquire(ctx, 0, "B", d), ratelimiter.ErrLeaseHeld)

	// Other partitions are independent.
	wantNil(t, "B acquires p1", m.Acquire(ctx, 1, "B", d))

	wantNil(t, "A releases p0", m.Release(ctx, 0, "A"))
	wantNil(t, "A releases p0 again", m.Release(ctx, 0, "A"))
	err = m.Renew(ctx, 0, "A", d)
	wantErrIs(t, "A renews after releasing", err, ratelimiter.ErrLeaseLost)
	t.Logf("renewing a released lease: %v", err)
	wantNil(t, "B acquires p0 after A released", m.Acquire(ctx, 0, "B", d))
	err = m.Renew(ctx, 0, "A", d)
	wantErrIs(t, "A renews p0 that B holds", err, ratelimiter.ErrLeaseLost)
	if !bloberror.HasCode(err, bloberror.LeaseIDMismatchWithLeaseOperation) {
		t.Errorf("A renews p0 that B holds: %v; want LeaseIdMismatchWithLeaseOperation", err)
	}

	// Once another owner has had the lease, A's renew fails even after
	// that owner released it.
	wantNil(t, "B acquires p2", m.Acquire(ctx, 2, "B", d))
	wantNil(t, "B releases p2", m.Release(ctx, 2, "B"))
	wantNil(t, "A acquires p2", m.Acquire(ctx, 2, "A", d))
	wantNil(t, "A releases p2", m.Release(ctx, 2, "A"))
	wantNil(t, "B acquires p2 again", m.Acquire(ctx, 2, "B", d))
	wantNil(t, "B releases p2 again", m.Release(ctx, 2, "B"))
	err = m.Renew(ctx, 2, "A", d)
	wantErrIs(t, "A renews p2 after B had it and released it", err, ratelimiter.ErrLeaseLost)
	t.Logf("renewing after another owner had and released the lease: %v", strings.SplitN(err.Error(), "\n", 2)[0])

	// The lease on the blob carries B's derived ID.
	props, err := m.client.NewBlobClient("partition-0000").GetProperties(ctx, nil)
	wantNil(t, "GetProperties", err)
	if props.LeaseState == nil || *props.LeaseState != lease.StateTypeLeased {
		t.Errorf("p0 lease state %v, want leased", props.LeaseState)
	}
	lc, err := m.leaseClient("partition-0000", LeaseID("B"))
	wantNil(t, "lease client", err)
	if _, err := lc.RenewLease(ctx, nil); err != nil {
		t.Errorf("renewing p0 directly with LeaseID(B): %v", err)
	}
}

func TestMismatchedLeaseID(t *testing.T) {
	ctx := t.Context()
	m := testManager(t, "")
	wantNil(t, "Provision", m.Provision(ctx, 1))
	// Someone outside this package leases the blob with its own ID.
	other := "00000000-0000-4000-8000-000000000001"
	lc, err := m.leaseClient("partition-0000", other)
	wantNil(t, "lease client", err)
	_, err = lc.AcquireLease(ctx, 20, nil)
	wantNil(t, "foreign acquire", err)
	wantErrIs(t, "acquire", m.Acquire(ctx, 0, "A", 15*time.Second), ratelimiter.ErrLeaseHeld)
	wantErrIs(t, "renew", m.Renew(ctx, 0, "A", 15*time.Second), ratelimiter.ErrLeaseLost)
	wantNil(t, "release", m.Release(ctx, 0, "A"))
	if _, err := lc.RenewLease(ctx, nil); err != nil {
		t.Errorf("the foreign lease was disturbed: %v", err)
	}
}

func TestBadArguments(t *testing.T) {
	ctx := t.Context()
	// A Manager on a container that does not exist: a bad argument must
	// be caught before any call.
	m := testManager(t, "")
	for _, d := range []time.Duration{10 * time.Second, 61 * time.Second, 0} {
		for name, call := range map[string]func() error{
			"Acquire": func() error { return m.Acquire(ctx, 0, "A", d) },
			"Renew":   func() error { return m.Renew(ctx, 0, "A", d) },
		} {
			err := call()
			if err == nil || !strings.Contains(err.Error(), d.String()) || !strings.Contains(err.Error(), "15s to 1m0s") || strings.Contains(err.Error(), "Provision") {
				t.Errorf("%s with %v: %v; want an error naming %v and the range", name, d, err, d)
			}
		}
	}
	for name, err := range map[string]error{
		"Acquire p-1":      m.Acquire(ctx, -1, "A", 15*time.Second),
		"Renew p-1":        m.Renew(ctx, -1, "A", 15*time.Second),
		"Release p-1":      m.Release(ctx, -1, "A"),
		"Acquire owner ''": m.Acquire(ctx, 0, "", 15*time.Second),
		"Release owner ''": m.Release(ctx, 0, ""),
		"Provision(-1)":    m.Provision(ctx, -1),
	} {
		if err == nil {
			t.Errorf("%s succeeded", name)
		}
	}
	for _, d := range []ratelimiter.Demand{
		{Owner: "", Want: 1, TTL: time.Second},
		{Owner: "A", Want: 1},
		{Owner: "A", Want: -1, TTL: time.Second},
		{Owner: "A", Held: []int{-2}, TTL: time.Second},
	} {
		if _, err := m.Announce(ctx, d); err == nil || strings.Contains(err.Error(), "Provision") {
			t.Errorf("Announce(%+v): %v; want an argument error", d, err)
		}
	}
}

func TestNotProvisioned(t *testing.T) {
	ctx := t.Context()
	m := testManager(t, "")
	const d = 15 * time.Second
	err := m.Acquire(ctx, 0, "A", d)
	if err == nil || errors.Is(err, ratelimiter.ErrLeaseHeld) || !strings.Contains(err.Error(), "call Provision") {
		t.Errorf("Acquire without a container: %v; want a call-Provision error", err)
	}
	wantErrIs(t, "Renew without a container", m.Renew(ctx, 0, "A", d), ratelimiter.ErrLeaseLost)
	wantNil(t, "Release without a container", m.Release(ctx, 0, "A"))
	if _, err := m.Announce(ctx, ratelimiter.Demand{Owner: "A", TTL: time.Second}); err == nil || !strings.Contains(err.Error(), "call Provision") {
		t.Errorf("Announce without a container: %v; want a call-Provision error", err)
	}

	wantNil(t, "Provision(2)", m.Provision(ctx, 2))
	err = m.Acquire(ctx, 2, "A", d)
	if err == nil || !strings.Contains(err.Error(), "call Provision") || !strings.Contains(err.Error(), "partition-0002") {
		t.Errorf("Acquire beyond the provisioned partitions: %v; want a call-Provision error naming the blob", err)
	}
}

func TestProvision(t *testing.T) {
	ctx := t.Context()
	c := testContainer(t)
	m, err := New(c, &Options{Prefix: "res-a/", ProvisionConcurrency: 3})
	wantNil(t, "New", err)
	wantNil(t, "Provision(3)", m.Provision(ctx, 3))
	wantNil(t, "Provision(3) again", m.Provision(ctx, 3))
	wantNil(t, "Provision(0)", m.Provision(ctx, 0))
	wantNil(t, "A acquires p1", m.Acquire(ctx, 1, "A", 30*time.Second))
	before, err := c.NewBlobClient("res-a/partition-0001").GetProperties(ctx, nil)
	wantNil(t, "GetProperties", err)

	// Growing keeps the leased blob as it is.
	wantNil(t, "Provision(20)", m.Provision(ctx, 20))
	// Creating a leased blob with If-None-Match: * (what a racing
	// instance does) is harmless too.
	wantNil(t, "createPartition(1) on the leased blob", m.createPartition(ctx, 1))
	etagAny := azcore.ETagAny
	_, err = c.NewBlockBlobClient("res-a/partition-0001").Upload(ctx, streaming.NopCloser(bytes.NewReader(nil)), &blockblob.UploadOptions{
		AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: &etagAny}},
	})
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("Put Blob with If-None-Match: * on a leased blob: %v", err)
	}
	t.Logf("Put Blob with If-None-Match: * on a leased blob: %d %s", re.StatusCode, re.ErrorCode)
	after, err := c.NewBlobClient("res-a/partition-0001").GetProperties(ctx, nil)
	wantNil(t, "GetProperties", err)
	if *before.ETag != *after.ETag || *after.LeaseState != lease.StateTypeLeased {
		t.Errorf("p1 changed: ETag %v -> %v, lease %v", *before.ETag, *after.ETag, *after.LeaseState)
	}
	wantErrIs(t, "B acquires p1", m.Acquire(ctx, 1, "B", 15*time.Second), ratelimiter.ErrLeaseHeld)
	wantNil(t, "A renews p1", m.Renew(ctx, 1, "A", 30*time.Second))

	// Two instances provisioning at once, and another prefix in the same
	// container.
	m2, err := New(c, &Options{Prefix: "res-b/"})
	wantNil(t, "New", err)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	wg.Go(func() { errs[0] = m.Provision(ctx, 30) })
	wg.Go(func() { errs[1] = m.Provision(ctx, 30) })
	wg.Go(func() { errs[2] = m2.Provision(ctx, 5) })
	wg.Wait()
	wantNil(t, "concurrent Provision", errors.Join(errs...))

	var names []string
	pager := c.NewListBlobsFlatPager(nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		wantNil(t, "list", err)
		for _, it := range page.Segment.BlobItems {
			names = append(names, *it.Name)
		}
	}
	if len(names) != 35 || !slices.Contains(names, "res-a/partition-0029") || !slices.Contains(names, "res-b/partition-0004") || slices.Contains(names, "res-b/partition-0005") {
		t.Errorf("blobs after provisioning 30 + 5: %d, %v", len(names), names)
	}
	// The leases of one prefix are not the other's.
	wantNil(t, "B acquires res-b p1", m2.Acquire(ctx, 1, "B", 15*time.Second))
}

func TestProvisionCancelled(t *testing.T) {
	m := testManager(t, "")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := m.Provision(ctx, 50)
	wantErrIs(t, "Provision with a cancelled ctx", err, context.Canceled)
}

func TestContextCancelled(t *testing.T) {
	m := testManager(t, "")
	wantNil(t, "Provision", m.Provision(t.Context(), 1))
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	expired, cancel2 := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel2()
	for _, tc := range []struct {
		ctx  context.Context
		want error
	}{{cancelled, context.Canceled}, {expired, context.DeadlineExceeded}} {
		ctx := tc.ctx
		_, announceErr := m.Announce(ctx, ratelimiter.Demand{Owner: "A", TTL: time.Second})
		for name, err := range map[string]error{
			"Provision": m.Provision(ctx, 1),
			"Acquire":   m.Acquire(ctx, 0, "A", 15*time.Second),
			"Renew":     m.Renew(ctx, 0, "A", 15*time.Second),
			"Release":   m.Release(ctx, 0, "A"),
			"Announce":  announceErr,
		} {
			if !errors.Is(err, tc.want) {
				t.Errorf("%s with a done ctx: %v; want %v", name, err, tc.want)
			}
		}
	}
	// Nothing was leased by the cancelled calls.
	wantNil(t, "B acquires", m.Acquire(t.Context(), 0, "B", 15*time.Second))
}

func TestAnnounce(t *testing.T) {
	ctx := t.Context()
	m := testManager(t, "shared/")
	wantNil(t, "Provision", m.Provision(ctx, 8))
	other, err := New(m.client, &Options{Prefix: "other/"})
	wantNil(t, "New", err)

	weird := "ünï côde/owner x+y=z%"
	start := time.Now()
	got, err := m.Announce(ctx, ratelimiter.Demand{Owner: "A", Want: 3, Held: []int{0, 1, 2}, TTL: 30 * time.Second})
	t.Logf("first Announce took %v", time.Since(start))
	wantNil(t, "A announces", err)
	want := []ratelimiter.Demand{{Owner: "A", Want: 3, Held: []int{0, 1, 2}}}
	if !demandsEqual(got, want) {
		t.Fatalf("A announces: got %+v, want %+v", got, want)
	}
	_, err = m.Announce(ctx, ratelimiter.Demand{Owner: weird, Want: 8, TTL: 30 * time.Second})
	wantNil(t, "weird announces", err)
	_, err = other.Announce(ctx, ratelimiter.Demand{Owner: "elsewhere", Want: 1, TTL: 30 * time.Second})
	wantNil(t, "another prefix announces", err)

	start = time.Now()
	got, err = m.Announce(ctx, ratelimiter.Demand{Owner: "A", Want: 5, Held: []int{0, 1, 2, 4, 7}, TTL: 30 * time.Second})
	t.Logf("Announce among 2 took %v", time.Since(start))
	wantNil(t, "A announces again", err)
	want = []ratelimiter.Demand{
		{Owner: "A", Want: 5, Held: []int{0, 1, 2, 4, 7}},
		{Owner: weird, Want: 8},
	}
	if !demandsEqual(got, want) {
		t.Fatalf("A announces again: got %+v, want %+v", got, want)
	}
	// The caller's slice is not kept.
	held := []int{3}
	got, err = m.Announce(ctx, ratelimiter.Demand{Owner: "B", Want: 1, Held: held, TTL: 30 * time.Second})
	wantNil(t, "B announces", err)
	held[0] = 99
	if len(got) != 3 || got[1].Owner != "B" || got[1].Held[0] != 3 {
		t.Errorf("B announces: got %+v", got)
	}
}

func TestAnnounceExpiry(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := testManager(t, "")
	wantNil(t, "Provision", m.Provision(ctx, 1))
	_, err := m.Announce(ctx, ratelimiter.Demand{Owner: "short", Want: 1, TTL: 2 * time.Second})
	wantNil(t, "short announces", err)
	announced := time.Now()
	// A demand never drops out before its TTL (Azure's timestamps are
	// whole seconds), and at most two seconds after it.
	var gone time.Duration
	for gone == 0 {
		got, err := m.Announce(ctx, ratelimiter.Demand{Owner: "long", Want: 1, TTL: time.Minute})
		wantNil(t, "long announces", err)
		age := time.Since(announced)
		if !slices.ContainsFunc(got, func(d ratelimiter.Demand) bool { return d.Owner == "short" }) {
			gone = age
			break
		}
		if age > 5*time.Second {
			t.Fatalf("the 2s demand still counts after %v", age)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("a 2s demand dropped out %v after it was announced", gone)
	if gone < 2*time.Second {
		t.Errorf("a 2s demand dropped out after %v", gone)
	}
	// The announce that found it expired deleted its blob.
	pager := m.client.NewListBlobsFlatPager(nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		wantNil(t, "list", err)
		for _, it := range page.Segment.BlobItems {
			if *it.Name == m.demandBlob("short") {
				t.Errorf("the expired demand blob %s was not deleted", *it.Name)
			}
		}
	}
}

func demandsEqual(a, b []ratelimiter.Demand) bool {
	return slices.EqualFunc(a, b, func(x, y ratelimiter.Demand) bool {
		return x.Owner == y.Owner && x.Want == y.Want && x.TTL == y.TTL && slices.Equal(x.Held, y.Held)
	})
}

// TestExpiry is the one slow test: it waits for 15-second leases to run
// out on Azurite's clock, checking on several partitions at once that
//   - another owner can take an expired lease (and when: polled);
//   - Renew with a longer duration than the acquire made it last longer;
//   - Renew with a shorter one made it end sooner;
//   - the holder can renew an expired lease nobody took.
func TestExpiry(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 17 s for leases to expire")
	}
	t.Parallel() // with TestConformance, which waits as long
	ctx := t.Context()
	m := testManager(t, "")
	wantNil(t, "Provision", m.Provision(ctx, 4))
	const short = 15 * time.Second
	start := time.Now()
	wantNil(t, "A acquires p0 for 15s", m.Acquire(ctx, 0, "A", short))
	wantNil(t, "A acquires p1 for 15s", m.Acquire(ctx, 1, "A", short))
	wantNil(t, "A acquires p2 for 15s", m.Acquire(ctx, 2, "A", short))
	wantNil(t, "A acquires p3 for 60s", m.Acquire(ctx, 3, "A", time.Minute))
	wantNil(t, "A renews p1 for 30s", m.Renew(ctx, 1, "A", 30*time.Second))
	wantNil(t, "A renews p3 for 15s", m.Renew(ctx, 3, "A", short))
	wantNil(t, "A renews p3 for 15s again (one call)", m.Renew(ctx, 3, "A", short))

	// Poll p0 from 14 s on.
	time.Sleep(time.Until(start.Add(14 * time.Second)))
	var took time.Duration
	for {
		err := m.Acquire(ctx, 0, "B", short)
		if err == nil {
			took = time.Since(start)
			break
		}
		wantErrIs(t, "B polls p0", err, ratelimiter.ErrLeaseHeld)
		if time.Since(start) > 18*time.Second {
			t.Fatalf("B could not take p0 %v after A acquired it for 15s", time.Since(start))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("B took p0 %v after A acquired it for 15s", took)
	if took < short-100*time.Millisecond {
		t.Errorf("B took p0 after only %v", took)
	}
	time.Sleep(time.Until(start.Add(16500 * time.Millisecond)))

	wantErrIs(t, "A renews p0 that B took", m.Renew(ctx, 0, "A", short), ratelimiter.ErrLeaseLost)
	wantErrIs(t, "B acquires p1 that A renewed for 30s", m.Acquire(ctx, 1, "B", short), ratelimiter.ErrLeaseHeld)
	wantNil(t, "A renews p2, expired but untaken", m.Renew(ctx, 2, "A", short))
	wantErrIs(t, "B acquires p2 after A renewed it", m.Acquire(ctx, 2, "B", short), ratelimiter.ErrLeaseHeld)
	wantNil(t, "B acquires p3 that A shortened to 15s", m.Acquire(ctx, 3, "B", short))
}

// sasSecret is the signature of the SAS tokens below: no error may show it.
const sasSecret = "SASsig0Secret1Value2"

// checkNoSAS fails if err shows the SAS token's signature, and unless it
// still names the container's endpoint.
func checkNoSAS(t *testing.T, what string, err error, secret string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", what)
		return
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("%s: the error shows the SAS signature: %v", what, err)
	}
}

// TestSASNotInErrors builds Managers from container URLs that carry a SAS
// token, as a user who was given one would, and checks that no error shows
// its signature: neither this package's own messages, which name the
// container, nor the SDK's, which name the request's URL.
func TestSASNotInErrors(t *testing.T) {
	fast := &container.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1, TryTimeout: 2 * time.Second}}}
	ctx := t.Context()
	try := func(t *testing.T, m *Manager, secret string) {
		t.Helper()
		checkNoSAS(t, "Provision", m.Provision(ctx, 2), secret)
		checkNoSAS(t, "Acquire", m.Acquire(ctx, 0, "a", MinLeaseDuration), secret)
		checkNoSAS(t, "Renew", m.Renew(ctx, 0, "a", MinLeaseDuration), secret)
		_, err := m.Announce(ctx, ratelimiter.Demand{Owner: "a", Want: 1, TTL: time.Minute})
		checkNoSAS(t, "Announce", err, secret)
		if err := m.Release(ctx, 0, "a"); err != nil {
			checkNoSAS(t, "Release", err, secret)
		}
	}
	t.Run("unreachable", func(t *testing.T) {
		c, err := container.NewClientWithNoCredential("http://127.0.0.1:1/devstoreaccount1/leases?sv=2023-11-03&se=2030-01-01T00%3A00%3A00Z&sr=c&sp=racwdl&sig="+sasSecret, fast)
		if err != nil {
			t.Fatal(err)
		}
		m, err := New(c, nil)
		if err != nil {
			t.Fatal(err)
		}
		try(t, m, sasSecret)
	})
	t.Run("azurite", func(t *testing.T) {
		// A valid SAS for a container that does not exist and that it may
		// not create: every call fails with Azure's own error.
		owner := testContainer(t)
		sas, err := owner.GetSASURL(sas.ContainerPermissions{Read: true, Write: true}, time.Now().Add(time.Hour), nil)
		if err != nil {
			t.Fatal(err)
		}
		// The signature as the URL carries it (percent-encoded): the form
		// messages show.
		_, secret, _ := strings.Cut(sas, "sig=")
		secret, _, _ = strings.Cut(secret, "&")
		if len(secret) < 20 {
			t.Fatalf("no signature in %s", sas)
		}
		c, err := container.NewClientWithNoCredential(sas, fast)
		if err != nil {
			t.Fatal(err)
		}
		m, err := New(c, nil)
		if err != nil {
			t.Fatal(err)
		}
		try(t, m, secret)
	})
}
