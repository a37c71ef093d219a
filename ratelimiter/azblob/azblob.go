package azblob

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/lease"

	"github.com/ratebatch/batcher/internal/redact"
	"github.com/ratebatch/batcher/ratelimiter"
)

// The lease durations Azure Blob Storage accepts. Acquire and Renew round
// a duration up to whole seconds and refuse it outside this range; the
// infinite leases Azure also offers are never used, since a dead instance
// would keep its partitions for ever.
const (
	MinLeaseDuration = 15 * time.Second
	MaxLeaseDuration = 60 * time.Second
)

// DefaultProvisionConcurrency is how many blobs Provision creates at once
// when [Options.ProvisionConcurrency] is zero.
const DefaultProvisionConcurrency = 8

// maxPrefixLen keeps every blob name under Azure's 1,024-character limit:
// the longest suffix is "demand/" and a 36-character GUID.
const maxPrefixLen = 960

// Options configure a [Manager]. The zero value (or a nil *Options) is
// ready to use.
type Options struct {
	// Prefix goes in front of every blob name the Manager uses
	// ("<Prefix>partition-0007", "<Prefix>demand/<guid>"), so that several
	// shared resources can keep their leases in one container. Default ""
	// (no prefix). Ending it with "/" reads well in storage browsers. It
	// must be at most 960 bytes. Two resources must not use prefixes of
	// which one starts with the other followed by "partition-" or
	// "demand/".
	Prefix string

	// ClientOptions are handed to the SDK when NewWithSharedKey or
	// NewWithCredential builds the container client: retries, transport,
	// logging, API version. Nil means the SDK's defaults (three retries of
	// transient failures with exponential back-off). New takes a client
	// that is configured already and refuses a non-nil ClientOptions.
	ClientOptions *container.ClientOptions

	// ProvisionConcurrency bounds how many partition blobs Provision
	// creates at the same time. Zero means DefaultProvisionConcurrency (8);
	// a negative value is an error.
	ProvisionConcurrency int
}

// A Manager is a [ratelimiter.LeaseManager] that keeps one lease per
// partition on a blob in an Azure Blob Storage container, and the
// instances' demands in small blobs beside them. See the package
// documentation for the layout, the calls each method makes and what each
// Azure error means.
//
// A Manager is safe for concurrent use. It holds no connection of its own
// beyond the SDK client's, starts no goroutine that outlives a call, and
// needs no closing. Create one with [New], [NewWithSharedKey] or
// [NewWithCredential]; the zero value is not usable.
type Manager struct {
	client      *container.Client
	prefix      string
	concurrency int

	mu struct {
		sync.Mutex
		// durations holds the duration, in seconds, that this Manager
		// last gave each lease it holds, so that Renew knows when Azure
		// (which keeps the original duration on renew) must be asked to
		// change it.
		durations map[leaseKey]int32
	}
}

type leaseKey struct {
	p  int
	id string
}

var _ ratelimiter.LeaseManager = (*Manager)(nil)

// New returns a Manager that keeps its leases in the container that client
// addresses. It is the most general constructor: the client may use any
// credential, endpoint and SDK option. opts may be nil; its ClientOptions
// must be nil, since client is configured already.
func New(client *container.Client, opts *Options) (*Manager, error) {
	if client == nil {
		return nil, errors.New("azblob: New: nil *container.Client")
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	var errs []error
	if o.ClientOptions != nil {
		errs = append(errs, errors.New("azblob: Options.ClientOptions is set, but New uses the client it is given; configure that client instead"))
	}
	if len(o.Prefix) > maxPrefixLen {
		errs = append(errs, fmt.Errorf("azblob: Options.Prefix is %d bytes long; at most %d fit in a blob name", len(o.Prefix), maxPrefixLen))
	}
	if o.ProvisionConcurrency < 0 {
		errs = append(errs, fmt.Errorf("azblob: Options.ProvisionConcurrency is %d; it must be zero (default %d) or positive", o.ProvisionConcurrency, DefaultProvisionConcurrency))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if o.ProvisionConcurrency == 0 {
		o.ProvisionConcurrency = DefaultProvisionConcurrency
	}
	m := &Manager{client: client, prefix: o.Prefix, concurrency: o.ProvisionConcurrency}
	m.mu.durations = make(map[leaseKey]int32)
	return m, nil
}

// NewWithSharedKey returns a Manager for the container at containerURL
// (for example "https://myaccount.blob.core.windows.net/leases", or
// Azurite's "http://127.0.0.1:10000/devstoreaccount1/leases"), signing
// requests with the storage account's name and key. opts may be nil.
func NewWithSharedKey(containerURL, accountName, accountKey string, opts *Options) (*Manager, error) {
	cred, err := container.NewSharedKeyCredential(accountName, accountKey)
	if err != nil {
		return nil, fmt.Errorf("azblob: shared key for account %q: %w", accountName, err)
	}
	o, copts := splitOptions(opts)
	client, err := container.NewClientWithSharedKeyCredential(containerURL, cred, copts)
	if err != nil {
		return nil, redact.Error(fmt.Errorf("azblob: container client for %q: %w", containerURL, err))
	}
	return New(client, o)
}

// NewWithCredential returns a Manager for the container at containerURL,
// authenticating with a Microsoft Entra ID token credential such as the one
// azidentity.NewDefaultAzureCredential returns. The identity needs the
// "Storage Blob Data Contributor" role (or equivalent data actions) on the
// container. Any endpoint works: sovereign clouds and private endpoints
// alike. opts may be nil.
func NewWithCredential(containerURL string, cred azcore.TokenCredential, opts *Options) (*Manager, error) {
	if cred == nil {
		return nil, errors.New("azblob: NewWithCredential: nil credential")
	}
	o, copts := splitOptions(opts)
	client, err := container.NewClient(containerURL, cred, copts)
	if err != nil {
		return nil, redact.Error(fmt.Errorf("azblob: container client for %q: %w", containerURL, err))
	}
	return New(client, o)
}

// splitOptions separates the SDK's client options, which the convenience
// constructors use, from the rest, which New checks.
func splitOptions(opts *Options) (*Options, *container.ClientOptions) {
	if opts == nil {
		return nil, nil
	}
	o := *opts
	copts := o.ClientOptions
	o.ClientOptions = nil
	return &o, copts
}

// Client returns the container client the Manager uses.
func (m *Manager) Client() *container.Client { return m.client }

// url returns the container's URL for messages, without the secrets a SAS
// token in it carries.
func (m *Manager) url() string { return redact.String(m.client.URL()) }

// LeaseID returns the lease ID that owner presents to Azure: a GUID derived
// from owner alone (the first 128 bits of a SHA-256 of a fixed namespace and
// owner, marked as an RFC 9562 version-8 UUID), so that the same owner
// always presents the same ID. Acquiring a lease one already holds is then
// accepted by Azure, a retried call is harmless, and an operator can match
// the lease ID shown on a blob to its owner.
func LeaseID(owner string) string {
	h := sha256.Sum256([]byte("github.com/ratebatch/batcher/ratelimiter/azblob\x00" + owner))
	u := h[:16]
	u[6] = u[6]&0x0f | 0x80 // version 8
	u[8] = u[8]&0x3f | 0x80 // variant 10x (RFC 9562)
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// leaseSeconds rounds d up to whole seconds and checks it against the
// range Azure accepts.
func leaseSeconds(d time.Duration) (int32, error) {
	if d <= 0 || d > MaxLeaseDuration {
		return 0, fmt.Errorf("lease duration %v is out of range: Azure Blob Storage takes %v to %v (rounded up to whole seconds)", d, MinLeaseDuration, MaxLeaseDuration)
	}
	s := (d + time.Second - 1) / time.Second
	if s < MinLeaseDuration/time.Second {
		return 0, fmt.Errorf("lease duration %v is out of range: Azure Blob Storage takes %v to %v (rounded up to whole seconds)", d, MinLeaseDuration, MaxLeaseDuration)
	}
	return int32(s), nil
}

// partitionBlob names partition p's blob.
func (m *Manager) partitionBlob(p int) (string, error) {
	if p < 0 {
		return "", fmt.Errorf("azblob: partition %d: partitions are numbered from 0", p)
	}
	return m.partitionPrefix() + fmt.Sprintf("%04d", p), nil
}

func (m *Manager) partitionPrefix() string { return m.prefix + "partition-" }

// partitionNumber parses the partition number out of a blob name listed
// under partitionPrefix.
func (m *Manager) partitionNumber(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, m.partitionPrefix())
	if !ok {
		return 0, false
	}
	p, err := strconv.Atoi(rest)
	if err != nil || p < 0 {
		return 0, false
	}
	if want, _ := m.partitionBlob(p); want != name {
		return 0, false // e.g. "partition-7" is not ours
	}
	return p, true
}

func (m *Manager) demandPrefix() string { return m.prefix + "demand/" }

// demandBlob names owner's demand blob.
func (m *Manager) demandBlob(owner string) string { return m.demandPrefix() + LeaseID(owner) }

// leaseClient returns a lease client on blob name presenting lease ID id.
// It does no I/O.
func (m *Manager) leaseClient(name, id string) (*lease.BlobClient, error) {
	lc, err := lease.NewBlobClient(m.client.NewBlobClient(name), &lease.BlobClientOptions{LeaseID: &id})
	if err != nil {
		return nil, fmt.Errorf("azblob: lease client for blob %q: %w", name, err)
	}
	return lc, nil
}

func (m *Manager) duration(p int, id string) (int32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.mu.durations[leaseKey{p, id}]
	return s, ok
}

func (m *Manager) setDuration(p int, id string, secs int32) {
	m.mu.Lock()
	m.mu.durations[leaseKey{p, id}] = secs
	m.mu.Unlock()
}

func (m *Manager) forgetDuration(p int, id string) {
	m.mu.Lock()
	delete(m.mu.durations, leaseKey{p, id})
	m.mu.Unlock()
}

// notFound reports whether err says the blob or its container is missing.
func notFound(err error) bool {
	return bloberror.HasCode(err, bloberror.BlobNotFound, bloberror.ContainerNotFound, bloberror.ResourceNotFound)
}

// statusCode returns the HTTP status of an Azure error, or 0.
func statusCode(err error) int {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}
