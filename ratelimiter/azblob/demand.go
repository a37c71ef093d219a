package azblob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/ratelimiter"
)

// Metadata keys of a demand blob. Azure wants C# identifiers; lowercase
// letters are safest, since some tools lowercase metadata names.
const (
	metaOwner = "owner" // the owner, query-escaped to stay ASCII
	metaWant  = "want"  // decimal
	metaHeld  = "held"  // ascending partitions as ranges: "0-3,7,9-10"; absent if none
	metaTTL   = "ttl"   // a time.Duration string: "30s"
)

// timestampSlack allows for Last-Modified and Date being whole seconds:
// a demand counts until the list's Date is at least TTL plus this after its
// Last-Modified, so it never drops out early, and drops out at most two
// seconds late.
const timestampSlack = time.Second

// maxSweep bounds how many expired demand blobs one Announce deletes.
const maxSweep = 4

// maxMetadata keeps a demand under Azure's 8 KiB metadata limit.
const maxMetadata = 7 << 10

// Announce writes d to owner's demand blob, "<Prefix>demand/<LeaseID(owner)>",
// with one Put Blob call (an empty body, the demand in its metadata), then
// lists every demand blob with its metadata (one List Blobs call per 5,000
// instances) and returns the demands that have not expired, d's own
// included, sorted by owner, with TTL zero.
//
// Expiry follows the server's clock, not this machine's: a demand counts
// until the list response's Date reaches its blob's Last-Modified plus its
// TTL. Both are whole seconds, so a demand counts for between its TTL and
// two seconds more. Announce then deletes up to four expired demand blobs,
// each only if unchanged since the list (If-Match on its ETag), ignoring
// failures: whichever instance announces next cleans up after a dead one.
//
// d.Owner must be non-empty, d.TTL positive, d.Want and d.Held's
// partitions non-negative. Demand blobs whose metadata this package did
// not write are ignored.
func (m *Manager) Announce(ctx context.Context, d ratelimiter.Demand) ([]ratelimiter.Demand, error) {
	ds, err := m.announce(ctx, d)
	return ds, redact.Error(err)
}

func (m *Manager) announce(ctx context.Context, d ratelimiter.Demand) ([]ratelimiter.Demand, error) {
	meta, err := encodeDemand(d)
	if err != nil {
		return nil, err
	}
	name := m.demandBlob(d.Owner)
	up, err := m.client.NewBlockBlobClient(name).Upload(ctx, streaming.NopCloser(bytes.NewReader(nil)), &blockblob.UploadOptions{Metadata: meta})
	if err != nil {
		if notFound(err) {
			return nil, fmt.Errorf("azblob: Announce: write demand blob %q: container %s does not exist; call Provision first: %w", name, m.url(), err)
		}
		return nil, fmt.Errorf("azblob: Announce: write demand blob %q: %w", name, err)
	}
	// If a list response had no Date, the upload's would do: it is
	// earlier, so demands would only count longer.
	var fallback time.Time
	switch {
	case up.Date != nil:
		fallback = *up.Date
	case up.LastModified != nil:
		fallback = *up.LastModified
	}

	own := d
	own.TTL = 0
	own.Held = slices.Clone(d.Held)
	out := []ratelimiter.Demand{own}
	type staleBlob struct {
		name string
		etag azcore.ETag
	}
	var stale []staleBlob

	prefix := m.demandPrefix()
	pager := m.client.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
		Prefix:  &prefix,
		Include: container.ListBlobsInclude{Metadata: true},
	})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("azblob: Announce: list demand blobs %q* in container %s: %w", prefix, m.url(), err)
		}
		now := fallback
		if page.Date != nil {
			now = *page.Date
		}
		if now.IsZero() {
			return nil, fmt.Errorf("azblob: Announce: the list of demand blobs %q* came without a Date header; cannot tell which demands expired", prefix)
		}
		if page.Segment == nil {
			continue
		}
		for _, it := range page.Segment.BlobItems {
			if it.Name == nil || *it.Name == name || it.Properties == nil || it.Properties.LastModified == nil {
				continue
			}
			dm, ttl, ok := decodeDemand(it.Metadata)
			if !ok {
				continue
			}
			if !now.Before(it.Properties.LastModified.Add(ttl + timestampSlack)) {
				if len(stale) < maxSweep && it.Properties.ETag != nil {
					stale = append(stale, staleBlob{*it.Name, *it.Properties.ETag})
				}
				continue
			}
			out = append(out, dm)
		}
	}
	slices.SortFunc(out, func(a, b ratelimiter.Demand) int { return strings.Compare(a.Owner, b.Owner) })

	// Best effort, bounded, and only while ctx lasts: an expired demand
	// that stays is skipped again next time.
	for _, s := range stale {
		if ctx.Err() != nil {
			break
		}
		etag := s.etag
		_, _ = m.client.NewBlobClient(s.name).Delete(ctx, &blob.DeleteOptions{
			AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: &etag}},
		})
	}
	return out, nil
}

// encodeDemand checks d and turns it into demand-blob metadata.
func encodeDemand(d ratelimiter.Demand) (map[string]*string, error) {
	var errs []error
	if d.Owner == "" {
		errs = append(errs, errors.New("azblob: Announce: empty Demand.Owner"))
	}
	if d.TTL <= 0 {
		errs = append(errs, fmt.Errorf("azblob: Announce: Demand.TTL is %v; it must be positive", d.TTL))
	}
	if d.Want < 0 {
		errs = append(errs, fmt.Errorf("azblob: Announce: Demand.Want is %d; it must not be negative", d.Want))
	}
	for _, p := range d.Held {
		if p < 0 {
			errs = append(errs, fmt.Errorf("azblob: Announce: Demand.Held has partition %d; partitions are numbered from 0", p))
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	meta := map[string]*string{
		metaOwner: ptr(url.QueryEscape(d.Owner)),
		metaWant:  ptr(strconv.Itoa(d.Want)),
		metaTTL:   ptr(d.TTL.String()),
	}
	if held := encodeHeld(d.Held); held != "" {
		meta[metaHeld] = &held
	}
	size := 0
	for k, v := range meta {
		size += len(k) + len(*v)
	}
	if size > maxMetadata {
		return nil, fmt.Errorf("azblob: Announce: the demand of owner %q takes %d bytes of metadata, more than the %d that fit; hold fewer or more contiguous partitions, or use a shorter owner", d.Owner, size, maxMetadata)
	}
	return meta, nil
}

func ptr[T any](v T) *T { return &v }

// decodeDemand reads demand-blob metadata back. ok is false when it is not
// a demand this package wrote.
func decodeDemand(meta map[string]*string) (d ratelimiter.Demand, ttl time.Duration, ok bool) {
	get := func(key string) (string, bool) {
		for k, v := range meta {
			if v != nil && strings.EqualFold(k, key) {
				return *v, true
			}
		}
		return "", false
	}
	owner, ok1 := get(metaOwner)
	want, ok2 := get(metaWant)
	ttlStr, ok3 := get(metaTTL)
	if !ok1 || !ok2 || !ok3 {
		return d, 0, false
	}
	var err error
	if d.Owner, err = url.QueryUnescape(owner); err != nil || d.Owner == "" {
		return d, 0, false
	}
	if d.Want, err = strconv.Atoi(want); err != nil {
		return d, 0, false
	}
	if ttl, err = time.ParseDuration(ttlStr); err != nil || ttl <= 0 {
		return d, 0, false
	}
	if held, ok := get(metaHeld); ok {
		if d.Held, err = decodeHeld(held); err != nil {
			return d, 0, false
		}
	}
	return d, ttl, true
}

// encodeHeld writes partitions as comma-separated runs: [0 1 2 3 7 9 10]
// becomes "0-3,7,9-10". Unsorted input is written as given, run by run.
func encodeHeld(held []int) string {
	var b strings.Builder
	for i := 0; i < len(held); {
		j := i
		for j+1 < len(held) && held[j+1] == held[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(held[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(held[j]))
		}
		i = j + 1
	}
	return b.String()
}

// decodeHeld reverses encodeHeld.
func decodeHeld(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var held []int
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("bad partition %q in %q", lo, s)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b-a > 1<<20 {
				return nil, fmt.Errorf("bad range %q in %q", part, s)
			}
		}
		for p := a; p <= b; p++ {
			held = append(held, p)
		}
	}
	return held, nil
}
