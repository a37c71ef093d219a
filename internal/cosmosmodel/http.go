package cosmosmodel

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The headers of the Cosmos DB REST API that the model reads or writes.
const (
	hdrCharge         = "x-ms-request-charge"
	hdrRetryAfter     = "x-ms-retry-after-ms"
	hdrSubstatus      = "x-ms-substatus"
	hdrActivityID     = "x-ms-activity-id"
	hdrPartitionKey   = "x-ms-documentdb-partitionkey"
	hdrUpsert         = "x-ms-documentdb-is-upsert"
	hdrIsBatch        = "x-ms-cosmos-is-batch-request"
	hdrIsQuery        = "x-ms-documentdb-isquery"
	hdrQuery          = "x-ms-documentdb-query"
	hdrItemCount      = "x-ms-item-count"
	hdrMaxItemCount   = "x-ms-max-item-count"
	hdrContinuation   = "x-ms-continuation"
	hdrPrefer         = "Prefer"
	preferMinimal     = "return=minimal"
	substatusThrottle = "3200"
)

// maxBody is the largest request body the model reads: Azure's limit for a
// document is 2 MB, and a batch's body a little more.
const maxBody = 4 << 20

// maxDocument is Azure's largest document.
const maxDocument = 2 << 20

type routeKind int

const (
	routeOther routeKind = iota
	routeAccount
	routeDBs
	routeDB
	routeColls
	routeColl
	routeDocs
	routeDoc
	routeOffers // /offers
	routeOffer  // /offers/{id}
)

type route struct {
	kind         routeKind
	db, coll, id string
}

// parseRoute reads the name-based resource path the SDK uses:
// /dbs/{db}/colls/{coll}/docs/{id}.
func parseRoute(r *http.Request) route {
	p := strings.Trim(r.URL.EscapedPath(), "/")
	if p == "" {
		return route{kind: routeAccount}
	}
	seg := strings.Split(p, "/")
	for i, s := range seg {
		if u, err := url.PathUnescape(s); err == nil {
			seg[i] = u
		}
	}
	if seg[0] == "offers" {
		switch len(seg) {
		case 1:
			return route{kind: routeOffers}
		case 2:
			return route{kind: routeOffer, id: seg[1]}
		}
		return route{}
	}
	want := []string{"dbs", "", "colls", "", "docs", ""}
	kinds := []routeKind{routeDBs, routeDB, routeColls, routeColl, routeDocs, routeDoc}
	if len(seg) > len(want) {
		return route{}
	}
	var rt route
	for i, s := range seg {
		if want[i] != "" && s != want[i] {
			return route{}
		}
		switch i {
		case 1:
			rt.db = s
		case 3:
			rt.coll = s
		case 5:
			rt.id = s
		}
	}
	rt.kind = kinds[len(seg)-1]
	return rt
}

// isOffer reports whether the route is on throughput offers.
func (rt route) isOffer() bool { return rt.kind == routeOffers || rt.kind == routeOffer }

// isDocument reports whether the route draws on the throughput budget.
func (rt route) isDocument() bool { return rt.kind == routeDocs || rt.kind == routeDoc }

func isTrue(h http.Header, name string) bool {
	v := h.Get(name)
	return strings.EqualFold(v, "true")
}

func isBatch(r *http.Request) bool { return isTrue(r.Header, hdrIsBatch) }

func isQuery(r *http.Request) bool {
	return isTrue(r.Header, hdrIsQuery) || isTrue(r.Header, hdrQuery) ||
		strings.HasPrefix(r.Header.Get("Content-Type"), "application/query+json")
}

func wantsMinimal(r *http.Request) bool {
	return strings.Contains(r.Header.Get(hdrPrefer), preferMinimal)
}

// readBody reads up to maxBody bytes of r's body.
func readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxBody {
		return nil, errTooLarge
	}
	return b, nil
}

var errTooLarge = errors.New("request body larger than 4 MB")

// formatCharge renders a charge as the service does: up to two decimals.
func formatCharge(c float64) string {
	return strconv.FormatFloat(round2(c), 'f', -1, 64)
}

func activityID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// reply is a response the model sends.
type reply struct {
	status int
	charge float64
	body   []byte
	header http.Header // extra headers, may be nil
}

func (rp reply) write(w http.ResponseWriter) {
	h := w.Header()
	for k, v := range rp.header {
		h[k] = v
	}
	h.Set("Content-Type", "application/json")
	h.Set(hdrCharge, formatCharge(rp.charge))
	if h.Get(hdrActivityID) == "" {
		h.Set(hdrActivityID, activityID())
	}
	h.Set("Content-Length", strconv.Itoa(len(rp.body)))
	w.WriteHeader(rp.status)
	_, _ = w.Write(rp.body)
}

// errorReply is a Cosmos DB error: {"code": ..., "message": ...}.
func errorReply(status int, code, msg string, charge float64) reply {
	b, _ := json.Marshal(struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}{code, msg})
	return reply{status: status, charge: charge, body: b}
}

// throttleReply is Azure's 429 for a request over the provisioned
// throughput.
func throttleReply(after time.Duration) reply {
	rp := errorReply(http.StatusTooManyRequests, "TooManyRequests",
		"Message: {\"Errors\":[\"Request rate is large. More Request Units may be needed, so no changes were made. Please retry this request later. Learn more: http://aka.ms/cosmosdb-error-429\"]}", 0)
	ms := int64(math.Ceil(float64(after) / float64(time.Millisecond)))
	rp.header = http.Header{}
	rp.header.Set(hdrRetryAfter, strconv.FormatInt(max(ms, 1), 10))
	rp.header.Set(hdrSubstatus, substatusThrottle)
	return rp
}

// accountBody is the database account, naming endpoint as the one region's
// endpoint: the SDK sends every later request there.
func accountBody(endpoint string) []byte {
	loc := []map[string]string{{"name": "South Central US", "databaseAccountEndpoint": endpoint}}
	b, _ := json.Marshal(map[string]any{
		"_rid":                         "cosmosmodel",
		"_self":                        "",
		"_dbs":                         "//dbs/",
		"id":                           "cosmosmodel",
		"media":                        "//media/",
		"addresses":                    "//addresses/",
		"writableLocations":            loc,
		"readableLocations":            loc,
		"enableMultipleWriteLocations": false,
		"userReplicationPolicy":        map[string]any{"asyncReplication": false, "minReplicaSetSize": 1, "maxReplicasetSize": 4},
		"userConsistencyPolicy":        map[string]any{"defaultConsistencyLevel": "Session"},
		"systemReplicationPolicy":      map[string]any{"minReplicaSetSize": 1, "maxReplicasetSize": 4},
		"readPolicy":                   map[string]any{"primaryReadCoefficient": 1, "secondaryReadCoefficient": 1},
		"queryEngineConfiguration":     `{"maxSqlQueryInputLength":262144,"maxJoinsPerSqlQuery":5,"maxLogicalAndPerSqlQuery":500,"maxLogicalOrPerSqlQuery":500,"maxUdfRefPerSqlQuery":10,"maxInExpressionItemsCount":16000,"queryMaxInMemorySortDocumentCount":500,"maxQueryRequestTimeoutFraction":0.9,"sqlAllowNonFiniteNumbers":false,"sqlAllowAggregateFunctions":true,"sqlAllowSubQuery":true,"sqlAllowScalarSubQuery":true,"allowNewKeywords":true,"sqlAllowLike":false,"maxSpatialQueryCells":12,"spatialMaxGeometryPointCount":256,"sqlAllowTop":true,"enableSpatialIndexing":true}`,
	})
	return b
}

// selfEndpoint is the endpoint a client reached the model at.
func selfEndpoint(r *http.Request) string { return "https://" + r.Host + "/" }

// systemProperties are the properties the service adds to a document.
var systemProperties = []string{"_rid", "_self", "_etag", "_ts", "_attachments", "_lsn"}

// userSize returns the size of a document without its system properties,
// the size the charges are computed on.
func userSize(doc []byte) int {
	var m map[string]json.RawMessage
	if json.Unmarshal(doc, &m) != nil {
		return len(doc)
	}
	n := len(doc)
	for _, p := range systemProperties {
		if v, ok := m[p]; ok {
			n -= len(p) + len(v) + 4 // "p":v,
		}
	}
	return max(n, 2)
}
