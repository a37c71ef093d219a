package cosmosmodel

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// Throughput reads and replaces. The SDK reads a container's (or a
// database's) throughput in three requests: GET of the container, for its
// _rid; a query on /offers, SELECT * FROM c WHERE c.offerResourceId =
// '<rid>'; and GET of the offer the query found, by its _self
// (offers/<id>/). It replaces it with a PUT on the same path. An offer
// names the resource by its _rid; the model learns which _rid is a
// database and which a container from its answers to requests on them (in
// both modes), and answers for the throughput of the whole model: its
// budget is one, whatever resource it is read on.

// resource is a database or container the model has answered for.
type resource struct {
	container bool
	rid, self string
}

// offers is the registry of resources by _rid, and of offer ids.
type offers struct {
	mu   sync.Mutex
	rids map[string]resource
	byID map[string]string // offer id -> resource _rid
}

// record notes the resource a successful answer on a database or a
// container describes.
func (o *offers) record(rt route, rp reply) {
	if rp.status != http.StatusOK && rp.status != http.StatusCreated {
		return
	}
	var container bool
	switch rt.kind {
	case routeDBs, routeDB:
	case routeColls, routeColl:
		container = true
	default:
		return
	}
	var props struct {
		RID  string `json:"_rid"`
		Self string `json:"_self"`
	}
	if json.Unmarshal(rp.body, &props) != nil || props.RID == "" {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rids[props.RID] = resource{container: container, rid: props.RID, self: props.Self}
}

// offerID returns the id of the offer of resource rid, registering it.
func (o *offers) offerID(rid string) string {
	h := fnv.New64a()
	h.Write([]byte(rid))
	id := strconv.FormatUint(h.Sum64(), 36)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.byID == nil {
		o.byID = map[string]string{}
	}
	o.byID[id] = rid
	return id
}

// lookup returns the resource of rid, or of the offer id, if known.
func (o *offers) lookup(rid, id string) (resource, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if id != "" {
		var ok bool
		if rid, ok = o.byID[id]; !ok {
			return resource{}, false
		}
	}
	r, ok := o.rids[rid]
	return r, ok
}

var offerQuery = regexp.MustCompile(`(?i)offerResourceId\s*=\s*'([^']*)'`)

// offerReply answers a request on /offers or /offers/{id}.
func (m *Model) offerReply(r *http.Request, rt route, body []byte) reply {
	switch {
	case m.opts.OffersForbidden:
		return errorReply(http.StatusForbidden, "Forbidden",
			"Request blocked by Auth cosmosmodel: the principal may not read or replace offers (cosmosmodel Options.OffersForbidden).", MetadataCharge)
	case m.opts.Serverless:
		return badRequest("Reading or replacing offers is not supported for serverless accounts.", MetadataCharge)
	}
	switch {
	case rt.kind == routeOffers && r.Method == http.MethodPost && isQuery(r):
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(body, &q); err != nil {
			return badRequest("The query body is not a JSON object with a query: "+err.Error(), MetadataCharge)
		}
		match := offerQuery.FindStringSubmatch(q.Query)
		if match == nil {
			return badRequest(fmt.Sprintf("cosmosmodel answers only the offer query SELECT * FROM c WHERE c.offerResourceId = '<rid>', not %q", q.Query), MetadataCharge)
		}
		var found []json.RawMessage
		if res, ok := m.offers.lookup(match[1], ""); ok && m.hasOffer(res) {
			found = append(found, m.offerBody(res))
		}
		b, _ := json.Marshal(map[string]any{"_rid": "", "Offers": found, "_count": len(found)})
		rp := reply{status: http.StatusOK, charge: MetadataCharge, body: b, header: http.Header{}}
		rp.header.Set(hdrItemCount, strconv.Itoa(len(found)))
		return rp
	case rt.kind == routeOffer && (r.Method == http.MethodGet || r.Method == http.MethodPut):
		res, ok := m.offers.lookup("", rt.id)
		if !ok || !m.hasOffer(res) {
			return notFound("offer " + rt.id)
		}
		if r.Method == http.MethodPut {
			if rp, ok := m.replaceOffer(body); !ok {
				return rp
			}
		}
		return reply{status: http.StatusOK, charge: MetadataCharge, body: m.offerBody(res)}
	}
	return badRequest(fmt.Sprintf("%s %s is not supported by cosmosmodel (offer queries, and GET and PUT of one offer, are).", r.Method, r.URL.Path), MetadataCharge)
}

// hasOffer reports whether res has a throughput of its own.
func (m *Model) hasOffer(res resource) bool {
	manual, auto := m.meter.throughput()
	if manual == 0 && auto == 0 { // unlimited: nothing is provisioned
		return false
	}
	return res.container != m.opts.DatabaseThroughput
}

// offerBody is the offer of res, as Azure renders it: for autoscale, the
// throughput scaled to now in offerThroughput and the maximum in
// offerAutopilotSettings.
func (m *Model) offerBody(res resource) json.RawMessage {
	manual, auto := m.meter.throughput()
	content := map[string]any{"offerIsRUPerMinuteThroughputEnabled": false}
	if auto > 0 {
		content["offerThroughput"] = int32(math.Round(m.meter.current(time.Now())))
		content["offerAutopilotSettings"] = map[string]any{"maxThroughput": int32(math.Round(auto))}
	} else {
		content["offerThroughput"] = int32(math.Round(manual))
	}
	id := m.offers.offerID(res.rid)
	b, _ := json.Marshal(map[string]any{
		"id":              id,
		"_rid":            id,
		"_self":           "offers/" + id + "/",
		"offerResourceId": res.rid,
		"resource":        res.self,
		"offerType":       "Invalid",
		"offerVersion":    "V2",
		"content":         content,
		"_etag":           fmt.Sprintf("%q", id+"-"+strconv.FormatFloat(manual+auto, 'f', -1, 64)),
		"_ts":             time.Now().Unix(),
	})
	return b
}

// replaceOffer applies the throughput of a replaced offer.
func (m *Model) replaceOffer(body []byte) (reply, bool) {
	var o struct {
		Content struct {
			Throughput *float64 `json:"offerThroughput"`
			Autoscale  *struct {
				Max float64 `json:"maxThroughput"`
			} `json:"offerAutopilotSettings"`
		} `json:"content"`
	}
	if err := json.Unmarshal(body, &o); err != nil {
		return badRequest("The offer is not a JSON object: "+err.Error(), MetadataCharge), false
	}
	switch c := o.Content; {
	case c.Autoscale != nil && c.Autoscale.Max > 0:
		m.SetAutoscaleMaxRU(c.Autoscale.Max)
	case c.Throughput != nil && *c.Throughput > 0:
		m.SetProvisionedRU(*c.Throughput)
	default:
		return badRequest("The offer names no throughput (content.offerThroughput or content.offerAutopilotSettings.maxThroughput).", MetadataCharge), false
	}
	return reply{}, true
}
