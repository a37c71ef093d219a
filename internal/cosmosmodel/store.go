package cosmosmodel

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// store is the in-memory document store. One mutex guards it all: the model
// is for tests and demos of a few thousand requests a second.
type store struct {
	mu struct {
		sync.Mutex
		seq uint64
		dbs map[string]*database
	}
}

type database struct {
	rid   string
	body  []byte // the properties as stored
	colls map[string]*container
}

type container struct {
	rid   string
	body  []byte
	paths []string                   // partition key paths, such as /pk
	parts map[string]map[string]*doc // canonical partition key -> id -> doc
}

type doc struct {
	id, pk string
	body   []byte // as stored, with system properties
	size   int    // the size the client sent, which charges are computed on
	etag   string
}

func newStore() *store {
	s := &store{}
	s.mu.dbs = map[string]*database{}
	return s
}

// nextLocked returns a new resource id and an etag.
func (s *store) nextLocked() (rid, etag string) {
	s.mu.seq++
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], s.mu.seq)
	return base64.StdEncoding.EncodeToString(b[:]), fmt.Sprintf("\"%08x-0000-0000-0000-%012x\"", s.mu.seq>>48, s.mu.seq)
}

// withSystem returns fields marshalled with the system properties added.
func withSystem(fields map[string]json.RawMessage, rid, self, etag string) []byte {
	q := func(s string) json.RawMessage { b, _ := json.Marshal(s); return b }
	fields["_rid"] = q(rid)
	fields["_self"] = q(self)
	fields["_etag"] = q(etag)
	fields["_ts"] = json.RawMessage(strconv.FormatInt(time.Now().Unix(), 10))
	b, _ := json.Marshal(fields)
	return b
}

func notFound(what string) reply {
	return errorReply(http.StatusNotFound, "NotFound", what+" does not exist", 0)
}

func badRequest(msg string, charge float64) reply {
	return errorReply(http.StatusBadRequest, "BadRequest", msg, charge)
}

// parseResource reads a database's or container's properties: a JSON object
// with a string id.
func parseResource(body []byte) (map[string]json.RawMessage, string, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, "", fmt.Errorf("the body is not a JSON object: %v", err)
	}
	var id string
	if err := json.Unmarshal(fields["id"], &id); err != nil || id == "" {
		return nil, "", fmt.Errorf("the required property 'id' is missing or not a string")
	}
	if strings.ContainsAny(id, "/\\?#") {
		return nil, "", fmt.Errorf("the id %q contains one of / \\ ? #", id)
	}
	return fields, id, nil
}

func (s *store) createDatabase(body []byte) reply {
	fields, id, err := parseResource(body)
	if err != nil {
		return badRequest(err.Error(), MetadataCharge)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.mu.dbs[id]; ok {
		return errorReply(http.StatusConflict, "Conflict", "Resource with specified id or name already exists.", MetadataCharge)
	}
	rid, etag := s.nextLocked()
	fields["_colls"] = json.RawMessage(`"colls/"`)
	fields["_users"] = json.RawMessage(`"users/"`)
	db := &database{rid: rid, colls: map[string]*container{}}
	db.body = withSystem(fields, rid, "dbs/"+rid+"/", etag)
	s.mu.dbs[id] = db
	return reply{status: http.StatusCreated, charge: MetadataCharge, body: db.body, header: etagHeader(etag)}
}

func etagHeader(etag string) http.Header {
	h := http.Header{}
	h.Set("Etag", etag)
	return h
}

func (s *store) readDatabase(id string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	db, ok := s.mu.dbs[id]
	if !ok {
		return notFound("database " + id)
	}
	return reply{status: http.StatusOK, charge: MetadataCharge, body: db.body}
}

func (s *store) deleteDatabase(id string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.mu.dbs[id]; !ok {
		return notFound("database " + id)
	}
	delete(s.mu.dbs, id)
	return reply{status: http.StatusNoContent, charge: MetadataCharge}
}

func (s *store) createContainer(dbID string, body []byte) reply {
	fields, id, err := parseResource(body)
	if err != nil {
		return badRequest(err.Error(), MetadataCharge)
	}
	var pk struct {
		Paths []string `json:"paths"`
	}
	if raw, ok := fields["partitionKey"]; ok {
		if err := json.Unmarshal(raw, &pk); err != nil {
			return badRequest("partitionKey is not a partition key definition: "+err.Error(), MetadataCharge)
		}
	}
	if len(pk.Paths) == 0 {
		return badRequest("the container "+id+" has no partition key paths; the model needs one, such as /pk", MetadataCharge)
	}
	for _, p := range pk.Paths {
		if !strings.HasPrefix(p, "/") || len(p) < 2 {
			return badRequest(fmt.Sprintf("partition key path %q must start with / and name a property", p), MetadataCharge)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	db, ok := s.mu.dbs[dbID]
	if !ok {
		return notFound("database " + dbID)
	}
	if _, ok := db.colls[id]; ok {
		return errorReply(http.StatusConflict, "Conflict", "Resource with specified id or name already exists.", MetadataCharge)
	}
	rid, etag := s.nextLocked()
	if _, ok := fields["indexingPolicy"]; !ok {
		fields["indexingPolicy"] = json.RawMessage(`{"indexingMode":"consistent","automatic":true,"includedPaths":[{"path":"/*"}],"excludedPaths":[{"path":"/\"_etag\"/?"}]}`)
	}
	for k, v := range map[string]string{"_docs": "docs/", "_sprocs": "sprocs/", "_triggers": "triggers/", "_udfs": "udfs/", "_conflicts": "conflicts/"} {
		fields[k], _ = json.Marshal(v)
	}
	c := &container{rid: rid, paths: pk.Paths, parts: map[string]map[string]*doc{}}
	c.body = withSystem(fields, rid, "dbs/"+db.rid+"/colls/"+rid+"/", etag)
	db.colls[id] = c
	return reply{status: http.StatusCreated, charge: MetadataCharge, body: c.body, header: etagHeader(etag)}
}

func (s *store) readContainer(dbID, id string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, rp, ok := s.containerLocked(dbID, id)
	if !ok {
		return rp
	}
	rp = reply{status: http.StatusOK, charge: MetadataCharge, body: c.body}
	return rp
}

func (s *store) deleteContainer(dbID, id string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, rp, ok := s.containerLocked(dbID, id); !ok {
		return rp
	}
	delete(s.mu.dbs[dbID].colls, id)
	return reply{status: http.StatusNoContent, charge: MetadataCharge}
}

func (s *store) containerLocked(dbID, id string) (*container, reply, bool) {
	db, ok := s.mu.dbs[dbID]
	if !ok {
		return nil, notFound("database " + dbID), false
	}
	c, ok := db.colls[id]
	if !ok {
		return nil, notFound("container " + dbID + "/" + id), false
	}
	return c, reply{}, true
}

func (s *store) items(dbID, id string) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, rp, ok := s.containerLocked(dbID, id)
	if !ok {
		return nil, fmt.Errorf("cosmosmodel: %s", rp.body)
	}
	docs := c.sortedLocked("", true)
	out := make([][]byte, len(docs))
	for i, d := range docs {
		out[i] = d.body
	}
	return out, nil
}

// sortedLocked returns the documents of partition pk, or of every partition
// if all, ordered by partition key and id.
func (c *container) sortedLocked(pk string, all bool) []*doc {
	var docs []*doc
	for k, part := range c.parts {
		if !all && k != pk {
			continue
		}
		for _, d := range part {
			docs = append(docs, d)
		}
	}
	slices.SortFunc(docs, func(a, b *doc) int {
		if c := strings.Compare(a.pk, b.pk); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	return docs
}

// canonicalPK renders a partition key value list (a JSON array, as in the
// x-ms-documentdb-partitionkey header) in one canonical form.
func canonicalPK(raw string) (string, error) {
	var vals []any
	if err := json.Unmarshal([]byte(raw), &vals); err != nil {
		return "", fmt.Errorf("partition key %s is not a JSON array: %v", raw, err)
	}
	b, err := json.Marshal(vals)
	return string(b), err
}

// docPK extracts the partition key of a document as a canonical JSON array;
// a missing value is {} (undefined), as the service has it.
func (c *container) docPK(fields map[string]json.RawMessage) string {
	vals := make([]any, len(c.paths))
	for i, p := range c.paths {
		var v any = map[string]any{}
		cur := fields
		parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
		for j, name := range parts {
			raw, ok := cur[name]
			if !ok {
				break
			}
			if j == len(parts)-1 {
				var x any
				if json.Unmarshal(raw, &x) == nil {
					v = x
				}
				break
			}
			var next map[string]json.RawMessage
			if json.Unmarshal(raw, &next) != nil {
				break
			}
			cur = next
		}
		vals[i] = v
	}
	b, _ := json.Marshal(vals)
	return string(b)
}

// write is one document to be written, checked.
type write struct {
	id, pk string
	fields map[string]json.RawMessage
	size   int
}

// prepare checks a document sent for writing against the container
// and the partition key the request named (hdrPK, "" if none).
func (c *container) prepare(body []byte, hdrPK string) (write, reply, bool) {
	if len(body) > maxDocument {
		return write{}, errorReply(http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "Request size is too large: a document is at most 2 MB", FailedCharge), false
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return write{}, badRequest("The document is not a JSON object.", FailedCharge), false
	}
	var id string
	if err := json.Unmarshal(fields["id"], &id); err != nil || id == "" {
		return write{}, badRequest("The input content is invalid because the required properties - 'id; ' - are missing", FailedCharge), false
	}
	if strings.ContainsAny(id, "/\\?#") {
		return write{}, badRequest(fmt.Sprintf("The id %q contains one of / \\ ? #", id), FailedCharge), false
	}
	pk := c.docPK(fields)
	if hdrPK != "" && hdrPK != pk {
		rp := badRequest(fmt.Sprintf("PartitionKey extracted from document (%s) doesn't match the one specified in the header (%s).", pk, hdrPK), FailedCharge)
		rp.header = http.Header{}
		rp.header.Set(hdrSubstatus, "1001")
		return write{}, rp, false
	}
	for _, p := range systemProperties {
		delete(fields, p)
	}
	return write{id: id, pk: pk, fields: fields, size: len(body)}, reply{}, true
}

// view is what a request sees of a container: its documents, with the
// changes of earlier operations of the same batch on top.
type view struct {
	c       *container
	s       *store
	pending map[[2]string]*doc // (pk, id) -> new doc, or nil if deleted
	order   [][2]string
}

func (v *view) get(pk, id string) *doc {
	if d, ok := v.pending[[2]string{pk, id}]; ok {
		return d
	}
	return v.c.parts[pk][id]
}

func (v *view) put(pk, id string, d *doc) {
	k := [2]string{pk, id}
	if _, ok := v.pending[k]; !ok {
		v.order = append(v.order, k)
	}
	v.pending[k] = d
}

// commitLocked applies the pending changes to the container.
func (v *view) commitLocked() {
	for _, k := range v.order {
		d := v.pending[k]
		part := v.c.parts[k[0]]
		if d == nil {
			delete(part, k[1])
			if len(part) == 0 {
				delete(v.c.parts, k[0])
			}
			continue
		}
		if part == nil {
			part = map[string]*doc{}
			v.c.parts[k[0]] = part
		}
		part[k[1]] = d
	}
}

// The operation kinds of the model, with the batch operation types' names.
const (
	opCreate  = "Create"
	opUpsert  = "Upsert"
	opReplace = "Replace"
	opRead    = "Read"
	opDelete  = "Delete"
)

// outcome is the result of one document operation, not yet committed.
type outcome struct {
	status int
	charge float64
	body   []byte // the document, for reads and (unless minimal) writes
	etag   string
	err    reply // set when status >= 400
}

// apply runs one operation against the view: pathID is the id named by the
// path (replace, read, delete), body the document sent (create, upsert,
// replace).
func (v *view) apply(kind, hdrPK, pathID string, body []byte) outcome {
	fail := func(rp reply) outcome { return outcome{status: rp.status, charge: rp.charge, err: rp} }
	switch kind {
	case opCreate, opUpsert, opReplace:
		w, rp, ok := v.c.prepare(body, hdrPK)
		if !ok {
			return fail(rp)
		}
		if kind == opReplace && w.id != pathID {
			return fail(badRequest(fmt.Sprintf("The id %q of the document differs from the id %q of the replace.", w.id, pathID), FailedCharge))
		}
		old := v.get(w.pk, w.id)
		status := http.StatusCreated
		switch {
		case kind == opCreate && old != nil:
			return fail(errorReply(http.StatusConflict, "Conflict", "Entity with the specified id already exists in the system.", FailedCharge))
		case kind == opReplace && old == nil:
			return fail(errorReply(http.StatusNotFound, "NotFound", "Entity with the specified id does not exist in the system.", FailedCharge))
		case old != nil:
			status = http.StatusOK
		}
		rid, etag := v.s.nextLocked()
		d := &doc{id: w.id, pk: w.pk, size: w.size, etag: etag}
		d.body = withSystem(w.fields, rid, "dbs/x/colls/"+v.c.rid+"/docs/"+rid+"/", etag)
		v.put(w.pk, w.id, d)
		return outcome{status: status, charge: WriteCharge(w.size), body: d.body, etag: etag}
	case opRead, opDelete:
		if hdrPK == "" {
			return fail(badRequest("A partition key (header x-ms-documentdb-partitionkey) is required to "+strings.ToLower(kind)+" an item.", FailedCharge))
		}
		d := v.get(hdrPK, pathID)
		if d == nil {
			return fail(errorReply(http.StatusNotFound, "NotFound", "Entity with the specified id does not exist in the system.", FailedCharge))
		}
		if kind == opRead {
			return outcome{status: http.StatusOK, charge: ReadCharge(d.size), body: d.body, etag: d.etag}
		}
		v.put(hdrPK, pathID, nil)
		return outcome{status: http.StatusNoContent, charge: WriteCharge(d.size)}
	}
	return fail(badRequest(fmt.Sprintf("The operation %q is not supported by cosmosmodel (Create, Upsert, Replace, Read and Delete are).", kind), FailedCharge))
}

// planned is a document request worked out but not applied: its reply, and
// the function that applies it, to call with the store still locked if the
// request is admitted (nil if there is nothing to apply).
type planned struct {
	reply  reply
	commit func()
}

// planLocked works out a document request in the in-memory store. The
// caller holds s.mu.
func (s *store) planLocked(r *http.Request, rt route, body []byte) planned {
	c, rp, ok := s.containerLocked(rt.db, rt.coll)
	if !ok {
		rp.charge = FailedCharge
		return planned{reply: rp}
	}
	hdrPK := ""
	if raw := r.Header.Get(hdrPartitionKey); raw != "" {
		pk, err := canonicalPK(raw)
		if err != nil {
			return planned{reply: badRequest(err.Error(), FailedCharge)}
		}
		hdrPK = pk
	}
	v := &view{c: c, s: s, pending: map[[2]string]*doc{}}
	var kind string
	switch {
	case rt.kind == routeDocs && r.Method == http.MethodPost && isBatch(r):
		return v.batch(hdrPK, body, wantsMinimal(r))
	case rt.kind == routeDocs && r.Method == http.MethodPost && isQuery(r):
		return planned{reply: v.query(r, hdrPK, body)}
	case rt.kind == routeDocs && r.Method == http.MethodPost:
		kind = opCreate
		if isTrue(r.Header, hdrUpsert) {
			kind = opUpsert
		}
	case rt.kind == routeDoc && r.Method == http.MethodPut:
		kind = opReplace
	case rt.kind == routeDoc && r.Method == http.MethodGet:
		kind = opRead
	case rt.kind == routeDoc && r.Method == http.MethodDelete:
		kind = opDelete
	default:
		return planned{reply: badRequest(fmt.Sprintf("%s %s is not supported by cosmosmodel's in-memory store.", r.Method, r.URL.Path), FailedCharge)}
	}
	o := v.apply(kind, hdrPK, rt.id, body)
	if o.status >= 400 {
		return planned{reply: o.err}
	}
	rp = reply{status: o.status, charge: o.charge, header: http.Header{}}
	if o.etag != "" {
		rp.header.Set("Etag", o.etag)
	}
	if kind == opRead || (kind != opDelete && !wantsMinimal(r)) {
		rp.body = o.body
	}
	return planned{reply: rp, commit: v.commitLocked}
}

// batchOp is one operation of a transactional batch, as the SDK sends it.
type batchOp struct {
	OperationType string          `json:"operationType"`
	ID            string          `json:"id"`
	ResourceBody  json.RawMessage `json:"resourceBody"`
}

// batchResult is one operation's result, as the SDK parses it.
type batchResult struct {
	StatusCode    int             `json:"statusCode"`
	RequestCharge float64         `json:"requestCharge"`
	ETag          string          `json:"eTag,omitempty"`
	ResourceBody  json.RawMessage `json:"resourceBody,omitempty"`
}

// maxBatchOps is Azure's limit on the operations of a transactional batch.
const maxBatchOps = 100

// batch runs a transactional batch atomically: all its operations are
// committed, or none, in which case the reply is 207 with the failed
// operation's status and 424 for every other.
func (v *view) batch(hdrPK string, body []byte, minimal bool) planned {
	if hdrPK == "" {
		return planned{reply: badRequest("A transactional batch needs a partition key (header x-ms-documentdb-partitionkey).", FailedCharge)}
	}
	var ops []batchOp
	if err := json.Unmarshal(body, &ops); err != nil {
		return planned{reply: badRequest("The batch body is not a JSON array of operations: "+err.Error(), FailedCharge)}
	}
	if len(ops) == 0 || len(ops) > maxBatchOps {
		return planned{reply: badRequest(fmt.Sprintf("Batch request has %d operations; a batch has 1 to %d.", len(ops), maxBatchOps), FailedCharge)}
	}
	results := make([]batchResult, len(ops))
	total := 0.0
	for i, op := range ops {
		id := op.ID
		o := v.apply(op.OperationType, hdrPK, id, op.ResourceBody)
		if o.status >= 400 {
			for j := range results {
				results[j] = batchResult{StatusCode: http.StatusFailedDependency}
			}
			results[i] = batchResult{StatusCode: o.status, RequestCharge: o.charge}
			b, _ := json.Marshal(results)
			return planned{reply: reply{status: http.StatusMultiStatus, charge: total + o.charge, body: b}}
		}
		total += o.charge
		res := batchResult{StatusCode: o.status, RequestCharge: o.charge, ETag: o.etag}
		if op.OperationType == opRead || (!minimal && o.body != nil) {
			res.ResourceBody = o.body
		}
		results[i] = res
	}
	b, _ := json.Marshal(results)
	return planned{reply: reply{status: http.StatusOK, charge: round2(total), body: b}, commit: v.commitLocked}
}

// The queries the in-memory store answers.
var (
	querySelectAll = regexp.MustCompile(`(?i)^\s*select\s+\*\s+from\s+\w+\s*$`)
	queryCount     = regexp.MustCompile(`(?i)^\s*select\s+value\s+count\s*\(\s*1\s*\)\s+from\s+\w+\s*$`)
)

// defaultPageSize is the page size of a query that names none.
const defaultPageSize = 1000

func (v *view) query(r *http.Request, hdrPK string, body []byte) reply {
	var q struct {
		Query string `json:"query"`
	}
	if err := json.Unmarshal(body, &q); err != nil {
		return badRequest("The query body is not a JSON object with a query: "+err.Error(), FailedCharge)
	}
	docs := v.c.sortedLocked(hdrPK, hdrPK == "")
	var out [][]byte
	var scanned, returned int
	var continuation string
	switch {
	case queryCount.MatchString(q.Query):
		out = [][]byte{[]byte(strconv.Itoa(len(docs)))}
		scanned, returned = len(docs), len(out[0])
	case querySelectAll.MatchString(q.Query):
		from := 0
		if c := r.Header.Get(hdrContinuation); c != "" {
			n, err := strconv.Atoi(c)
			if err != nil || n < 0 {
				return badRequest("Invalid continuation token "+strconv.Quote(c), FailedCharge)
			}
			from = min(n, len(docs))
		}
		size := defaultPageSize
		if n, err := strconv.Atoi(r.Header.Get(hdrMaxItemCount)); err == nil && n > 0 {
			size = n
		}
		to := min(from+size, len(docs))
		for _, d := range docs[from:to] {
			out = append(out, d.body)
			returned += len(d.body)
		}
		scanned = to - from
		if to < len(docs) {
			continuation = strconv.Itoa(to)
		}
	default:
		return badRequest(fmt.Sprintf("cosmosmodel answers only the queries \"SELECT * FROM c\" and \"SELECT VALUE COUNT(1) FROM c\", not %q; read the store with Model.Items", q.Query), FailedCharge)
	}
	var buf bytes.Buffer
	buf.WriteString(`{"_rid":`)
	rid, _ := json.Marshal(v.c.rid)
	buf.Write(rid)
	buf.WriteString(`,"Documents":[`)
	for i, d := range out {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(d)
	}
	fmt.Fprintf(&buf, `],"_count":%d}`, len(out))
	rp := reply{status: http.StatusOK, charge: QueryCharge(scanned, returned), body: buf.Bytes(), header: http.Header{}}
	rp.header.Set(hdrItemCount, strconv.Itoa(len(out)))
	if continuation != "" {
		rp.header.Set(hdrContinuation, continuation)
	}
	return rp
}
