package cosmosmodel

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/ratebatch/batcher/internal/redact"
)

// serveMemory answers a request from the in-memory store.
func (m *Model) serveMemory(w http.ResponseWriter, r *http.Request) {
	rt := parseRoute(r)
	body, err := readBody(r)
	if err != nil {
		m.reject(w, rt, err)
		return
	}
	if !rt.isDocument() {
		m.meter.metadata()
		if rt.isOffer() {
			m.offerReply(r, rt, body).write(w)
			return
		}
		rp := m.metadataReply(r, rt, body)
		m.offers.record(rt, rp)
		rp.write(w)
		return
	}
	part := m.partitionOfRequest(r)
	s := m.store
	s.mu.Lock()
	p := s.planLocked(r, rt, body)
	now := time.Now()
	_, ok, after := m.meter.admit(now, part, p.reply.charge)
	if ok && p.commit != nil {
		p.commit()
	}
	s.mu.Unlock()
	m.observe(r, now, p.reply.charge, ok)
	if !ok {
		throttleReply(after).write(w)
		return
	}
	p.reply.write(w)
}

// observe calls Options.Observe, if set.
func (m *Model) observe(r *http.Request, at time.Time, charge float64, admitted bool) {
	if m.opts.Observe != nil {
		m.opts.Observe(r, at, charge, admitted)
	}
}

// reject answers a request whose body could not be read.
// partitionOfRequest is the physical partition a document request draws
// on: its partition key header's, or 0 without one.
func (m *Model) partitionOfRequest(r *http.Request) int {
	raw := r.Header.Get(hdrPartitionKey)
	if raw == "" || m.meter.parts == 1 {
		return 0
	}
	pk, err := canonicalPK(raw)
	if err != nil {
		return 0
	}
	return partitionOf(pk, m.meter.parts)
}

func (m *Model) reject(w http.ResponseWriter, rt route, err error) {
	if rt.isDocument() {
		m.meter.admit(time.Now(), 0, 0)
	} else {
		m.meter.metadata()
	}
	if errors.Is(err, errTooLarge) {
		errorReply(http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "cosmosmodel: "+err.Error(), 0).write(w)
		return
	}
	badRequest("cosmosmodel: reading the request body: "+err.Error(), 0).write(w)
}

// metadataReply answers a request on the account, a database or a container
// from the in-memory store.
func (m *Model) metadataReply(r *http.Request, rt route, body []byte) reply {
	s := m.store
	switch {
	case rt.kind == routeAccount && r.Method == http.MethodGet:
		return reply{status: http.StatusOK, charge: MetadataCharge, body: accountBody(selfEndpoint(r))}
	case rt.kind == routeDBs && r.Method == http.MethodPost:
		return s.createDatabase(body)
	case rt.kind == routeDB && r.Method == http.MethodGet:
		return s.readDatabase(rt.db)
	case rt.kind == routeDB && r.Method == http.MethodDelete:
		return s.deleteDatabase(rt.db)
	case rt.kind == routeColls && r.Method == http.MethodPost:
		return s.createContainer(rt.db, body)
	case rt.kind == routeColl && r.Method == http.MethodGet:
		return s.readContainer(rt.db, rt.coll)
	case rt.kind == routeColl && r.Method == http.MethodDelete:
		return s.deleteContainer(rt.db, rt.coll)
	}
	return badRequest(fmt.Sprintf("%s %s is not supported by cosmosmodel's in-memory store (databases, containers, items, transactional batches and two queries are).", r.Method, r.URL.Path), MetadataCharge)
}

// serveProxy forwards a request to the backend, throttling and charging it.
func (m *Model) serveProxy(w http.ResponseWriter, r *http.Request) {
	rt := parseRoute(r)
	body, err := readBody(r)
	if err != nil {
		m.reject(w, rt, err)
		return
	}
	if !rt.isDocument() {
		m.meter.metadata()
		if rt.isOffer() {
			m.offerReply(r, rt, body).write(w)
			return
		}
		resp, err := m.backend.forward(r, body)
		if err != nil {
			unavailable(m.backend, err).write(w)
			return
		}
		resp.charge = MetadataCharge
		if rt.kind == routeAccount && resp.status == http.StatusOK {
			resp.body = rewriteAccount(resp.body, selfEndpoint(r))
		}
		m.offers.record(rt, resp)
		resp.write(w)
		return
	}
	est := estimate(r, rt, body)
	part := m.partitionOfRequest(r)
	now := time.Now()
	sec, ok, after := m.meter.admit(now, part, est)
	m.observe(r, now, est, ok)
	if !ok {
		throttleReply(after).write(w)
		return
	}
	resp, err := m.backend.forward(r, body)
	if err != nil {
		m.meter.adjust(sec, part, -est)
		unavailable(m.backend, err).write(w)
		return
	}
	if resp.status == http.StatusTooManyRequests { // the backend's own throttle
		m.meter.adjust(sec, part, -est)
		resp.charge = 0
		resp.write(w)
		return
	}
	actual := actualCharge(r, rt, body, &resp)
	m.meter.adjust(sec, part, actual-est)
	resp.charge = actual
	resp.write(w)
}

func unavailable(b *client, err error) reply {
	return errorReply(http.StatusServiceUnavailable, "ServiceUnavailable",
		redact.String(fmt.Sprintf("cosmosmodel: the backend %s did not answer: %v", b.base, err)), 0)
}

// estimate is the charge a request is admitted on in proxy mode: exact for
// writes (the body is at hand), a 1 KB document for reads and deletes.
func estimate(r *http.Request, rt route, body []byte) float64 {
	switch {
	case rt.kind == routeDocs && r.Method == http.MethodPost && isBatch(r):
		var ops []batchOp
		if json.Unmarshal(body, &ops) != nil {
			return FailedCharge
		}
		total := 0.0
		for _, op := range ops {
			total += opEstimate(op.OperationType, len(op.ResourceBody))
		}
		return round2(total)
	case rt.kind == routeDocs && r.Method == http.MethodPost && isQuery(r):
		return QueryBaseCharge
	case rt.kind == routeDocs && r.Method == http.MethodPost, rt.kind == routeDoc && r.Method == http.MethodPut:
		return WriteCharge(len(body))
	case rt.kind == routeDoc && r.Method == http.MethodDelete:
		return WriteCharge(0)
	case rt.kind == routeDoc && r.Method == http.MethodGet:
		return ReadCharge(0)
	}
	return FailedCharge
}

func opEstimate(kind string, size int) float64 {
	switch kind {
	case opCreate, opUpsert, opReplace:
		return WriteCharge(size)
	case opDelete:
		return WriteCharge(0)
	case opRead:
		return ReadCharge(0)
	}
	return FailedCharge
}

// actualCharge computes a forwarded request's charge from the backend's
// answer, and replaces the per-operation charges of a batch's results (the
// local server says 1 for everything). A batch whose operations did not all
// succeed is answered 207, as Azure does.
func actualCharge(r *http.Request, rt route, body []byte, resp *reply) float64 {
	batch := rt.kind == routeDocs && r.Method == http.MethodPost && isBatch(r)
	if resp.status >= 400 {
		return FailedCharge
	}
	switch {
	case batch:
		var ops []batchOp
		var results []map[string]json.RawMessage
		if json.Unmarshal(body, &ops) != nil || json.Unmarshal(resp.body, &results) != nil || len(ops) != len(results) {
			return estimate(r, rt, body)
		}
		total := 0.0
		failed := false
		for i, res := range results {
			var status int
			_ = json.Unmarshal(res["statusCode"], &status)
			var c float64
			switch {
			case status == http.StatusFailedDependency:
				failed = true
			case status >= 400:
				failed = true
				c = FailedCharge
			case ops[i].OperationType == opRead:
				c = ReadCharge(userSize(res["resourceBody"]))
			default:
				c = opEstimate(ops[i].OperationType, len(ops[i].ResourceBody))
			}
			res["requestCharge"] = json.RawMessage(formatCharge(c))
			total += c
		}
		if b, err := json.Marshal(results); err == nil {
			resp.body = b
		}
		if failed && resp.status == http.StatusOK {
			resp.status = http.StatusMultiStatus
		}
		return round2(total)
	case rt.kind == routeDocs && r.Method == http.MethodPost && isQuery(r):
		n := 0
		fmt.Sscan(resp.header.Get(hdrItemCount), &n)
		return QueryCharge(n, len(resp.body))
	case rt.kind == routeDoc && r.Method == http.MethodGet:
		return ReadCharge(userSize(resp.body))
	}
	return estimate(r, rt, body)
}

// rewriteAccount names endpoint as the account's endpoint, in place of the
// backend's.
func rewriteAccount(body []byte, endpoint string) []byte {
	var acct map[string]json.RawMessage
	if json.Unmarshal(body, &acct) != nil {
		return body
	}
	for _, key := range []string{"writableLocations", "readableLocations"} {
		var locs []map[string]any
		if json.Unmarshal(acct[key], &locs) != nil {
			continue
		}
		for _, l := range locs {
			l["databaseAccountEndpoint"] = endpoint
		}
		acct[key], _ = json.Marshal(locs)
	}
	b, err := json.Marshal(acct)
	if err != nil {
		return body
	}
	return b
}
