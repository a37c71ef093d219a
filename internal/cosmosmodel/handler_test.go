package cosmosmodel_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratebatch/batcher/internal/cosmosmodel"
)

// do serves one request through h, as the SDK would send it.
func do(t *testing.T, h http.Handler, method, path string, body string, header map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, "https://model.test"+path, strings.NewReader(body))
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func newInMemory(t *testing.T, ru float64) (*cosmosmodel.Model, http.Handler) {
	t.Helper()
	m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: ru})
	if err != nil {
		t.Fatal(err)
	}
	h := m.Handler()
	if rec := do(t, h, "POST", "/dbs", `{"id":"db"}`, nil); rec.Code != 201 {
		t.Fatalf("create database: %d %s", rec.Code, rec.Body)
	}
	if rec := do(t, h, "POST", "/dbs/db/colls", `{"id":"c","partitionKey":{"paths":["/pk"],"kind":"Hash"}}`, nil); rec.Code != 201 {
		t.Fatalf("create container: %d %s", rec.Code, rec.Body)
	}
	return m, h
}

var pk1 = map[string]string{"x-ms-documentdb-partitionkey": `["p1"]`, "Prefer": "return=minimal"}

// TestThrottleWindows checks, on fake time, that a second's budget is
// enforced to the hundredth of an RU, that the 429 says how long to wait
// until the next second, and the per-second counts.
func TestThrottleWindows(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, h := newInMemory(t, 100)
		write := func(i int) *httptest.ResponseRecorder {
			return do(t, h, "POST", "/dbs/db/colls/c/docs", string(item(fmt.Sprint(i), "p1", 1024)), pk1)
		}
		for i := range 17 { // 17 × 5.71 = 97.07
			if rec := write(i); rec.Code != 201 || rec.Header().Get("x-ms-request-charge") != "5.71" {
				t.Fatalf("write %d: %d, charge %q", i, rec.Code, rec.Header().Get("x-ms-request-charge"))
			}
		}
		check429 := func(wantAfter string) {
			t.Helper()
			rec := write(100)
			var body struct{ Code string }
			json.Unmarshal(rec.Body.Bytes(), &body)
			hd := rec.Header()
			if rec.Code != 429 || hd.Get("x-ms-retry-after-ms") != wantAfter || hd.Get("x-ms-substatus") != "3200" ||
				hd.Get("x-ms-request-charge") != "0" || body.Code != "TooManyRequests" {
				t.Errorf("over budget: %d, retry after %q (want %q), substatus %q, charge %q, body %s",
					rec.Code, hd.Get("x-ms-retry-after-ms"), wantAfter, hd.Get("x-ms-substatus"), hd.Get("x-ms-request-charge"), rec.Body)
			}
		}
		check429("1000")
		// A read of 1 RU still fits (98.07); a second one fits (99.07), a
		// third too (100.07 > 100) does not.
		read := func() int { return do(t, h, "GET", "/dbs/db/colls/c/docs/0", "", pk1).Code }
		if c1, c2, c3 := read(), read(), read(); c1 != 200 || c2 != 200 || c3 != 429 {
			t.Errorf("reads: %d %d %d, want 200 200 429", c1, c2, c3)
		}
		time.Sleep(400 * time.Millisecond)
		check429("600")
		time.Sleep(600*time.Millisecond - time.Nanosecond)
		check429("1") // rounded up to a whole millisecond
		time.Sleep(time.Nanosecond)
		if rec := write(17); rec.Code != 201 {
			t.Errorf("write in the next second: %d %s", rec.Code, rec.Body)
		}
		time.Sleep(1500 * time.Millisecond)
		want := []cosmosmodel.Second{
			{At: 0, RU: 99.07, Requests: 23, Throttled: 4, BudgetRU: 100},
			{At: time.Second, RU: 5.71, Requests: 1, BudgetRU: 100},
			{At: 2 * time.Second, BudgetRU: 100},
		}
		if got := m.History(); !slices.Equal(got, want) {
			t.Errorf("history:\n got %+v\nwant %+v", got, want)
		}
		st := m.Stats()
		if st.RU != 104.78 || st.Requests != 24 || st.Throttled != 4 || st.PeakRU != 99.07 || st.MetadataRequests != 2 || st.Elapsed != 2500*time.Millisecond {
			t.Errorf("stats: %+v", st)
		}
		// A lower budget applies from the next request on.
		m.SetProvisionedRU(5)
		time.Sleep(500 * time.Millisecond)
		if a, b := read(), read(); a != 200 || b != 200 {
			t.Errorf("reads at 5 RU/s: %d %d", a, b)
		}
		if c := write(18); c.Code != 429 {
			t.Errorf("write at 5 RU/s after 2 RU: %d, want 429", c.Code)
		}
	})
}

// TestObserveSeesEachDocumentRequestAsItIsDecided checks, on fake time, that
// Options.Observe is called once for each request on a document, with the
// moment it was counted in, its charge and whether it was admitted, and not
// for metadata requests.
func TestObserveSeesEachDocumentRequestAsItIsDecided(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		type call struct {
			path     string
			at       time.Duration
			charge   float64
			admitted bool
		}
		var calls []call
		t0 := time.Now()
		m, err := cosmosmodel.New(cosmosmodel.Options{ProvisionedRU: 10, Observe: func(r *http.Request, at time.Time, charge float64, admitted bool) {
			calls = append(calls, call{r.URL.Path, at.Sub(t0), charge, admitted})
		}})
		if err != nil {
			t.Fatal(err)
		}
		h := m.Handler()
		do(t, h, "POST", "/dbs", `{"id":"db"}`, nil)
		do(t, h, "POST", "/dbs/db/colls", `{"id":"c","partitionKey":{"paths":["/pk"],"kind":"Hash"}}`, nil)
		time.Sleep(300 * time.Millisecond)
		do(t, h, "POST", "/dbs/db/colls/c/docs", string(item("a", "p1", 1024)), pk1) // 5.71 RU
		do(t, h, "POST", "/dbs/db/colls/c/docs", string(item("b", "p1", 1024)), pk1) // 11.42 > 10: 429
		time.Sleep(time.Second)
		do(t, h, "GET", "/dbs/db/colls/c/docs/a", "", pk1) // 1 RU
		want := []call{
			{"/dbs/db/colls/c/docs", 300 * time.Millisecond, 5.71, true},
			{"/dbs/db/colls/c/docs", 300 * time.Millisecond, 5.71, false},
			{"/dbs/db/colls/c/docs/a", 1300 * time.Millisecond, 1, true},
		}
		if !slices.Equal(calls, want) {
			t.Errorf("Observe calls:\n got %+v\nwant %+v", calls, want)
		}
	})
}

// TestBatchAtomic checks a transactional batch: all or nothing, 207 and 424s.
func TestBatchAtomic(t *testing.T) {
	m, h := newInMemory(t, 0)
	batch := map[string]string{"x-ms-documentdb-partitionkey": `["p1"]`, "x-ms-cosmos-is-batch-request": "True"}
	ok := `[{"operationType":"Create","resourceBody":{"id":"a","pk":"p1"}},{"operationType":"Upsert","resourceBody":{"id":"b","pk":"p1"}}]`
	rec := do(t, h, "POST", "/dbs/db/colls/c/docs", ok, batch)
	if rec.Code != 200 || rec.Header().Get("x-ms-request-charge") != "11.42" {
		t.Fatalf("batch: %d, charge %s: %s", rec.Code, rec.Header().Get("x-ms-request-charge"), rec.Body)
	}
	bad := `[{"operationType":"Upsert","resourceBody":{"id":"c","pk":"p1"}},{"operationType":"Create","resourceBody":{"id":"a","pk":"p1"}},{"operationType":"Delete","id":"b"}]`
	rec = do(t, h, "POST", "/dbs/db/colls/c/docs", bad, batch)
	var res []struct {
		StatusCode    int
		RequestCharge float64
	}
	json.Unmarshal(rec.Body.Bytes(), &res)
	if rec.Code != 207 || len(res) != 3 || res[0].StatusCode != 424 || res[1].StatusCode != 409 || res[2].StatusCode != 424 {
		t.Errorf("failing batch: %d %s", rec.Code, rec.Body)
	}
	if rec.Header().Get("x-ms-request-charge") != "6.71" { // the upsert that ran, and the conflict
		t.Errorf("failing batch charged %s, want 6.71", rec.Header().Get("x-ms-request-charge"))
	}
	items, _ := m.Items("db", "c")
	if len(items) != 2 {
		t.Errorf("after a failed batch: %d items, want 2 (a, b)", len(items))
	}
	over := "[" + strings.Repeat(`{"operationType":"Read","id":"a"},`, 100) + `{"operationType":"Read","id":"a"}]`
	if rec := do(t, h, "POST", "/dbs/db/colls/c/docs", over, batch); rec.Code != 400 {
		t.Errorf("batch of 101: %d, want 400", rec.Code)
	}
	wrongPK := `[{"operationType":"Create","resourceBody":{"id":"z","pk":"p2"}}]`
	if rec := do(t, h, "POST", "/dbs/db/colls/c/docs", wrongPK, batch); rec.Code != 207 {
		t.Errorf("batch with a document of another partition: %d %s, want 207", rec.Code, rec.Body)
	}
}

func TestBadRequests(t *testing.T) {
	_, h := newInMemory(t, 0)
	tests := []struct {
		method, path, body string
		header             map[string]string
		want               int
	}{
		{"POST", "/dbs", `{"id":"db"}`, nil, 409},
		{"POST", "/dbs", `{}`, nil, 400},
		{"GET", "/dbs/nope", "", nil, 404},
		{"POST", "/dbs/db/colls", `{"id":"nopk"}`, nil, 400},
		{"POST", "/dbs/nope/colls", `{"id":"x","partitionKey":{"paths":["/pk"]}}`, nil, 404},
		{"GET", "/dbs/db/colls/nope", "", nil, 404},
		{"POST", "/dbs/db/colls/nope/docs", `{"id":"a","pk":"p1"}`, pk1, 404},
		{"POST", "/dbs/db/colls/c/docs", `{"pk":"p1"}`, pk1, 400},
		{"POST", "/dbs/db/colls/c/docs", `not json`, pk1, 400},
		{"POST", "/dbs/db/colls/c/docs", `{"id":"a","pk":"p2"}`, pk1, 400},
		{"POST", "/dbs/db/colls/c/docs", `{"query":"SELECT c.id FROM c"}`, map[string]string{"x-ms-documentdb-isquery": "True"}, 400},
		{"PATCH", "/dbs/db/colls/c/docs/a", `{}`, pk1, 400},
		{"GET", "/dbs/db/colls/c/docs/a", ``, nil, 400},
		{"GET", "/offers", "", nil, 400},
		{"POST", "/dbs/db/colls/c/docs", strings.Repeat(" ", 5<<20), pk1, 413},
	}
	for _, tt := range tests {
		rec := do(t, h, tt.method, tt.path, tt.body, tt.header)
		var e struct{ Code, Message string }
		if rec.Code != tt.want || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Code == "" || e.Message == "" {
			t.Errorf("%s %s %.40q: %d %s, want %d with a Cosmos error body", tt.method, tt.path, tt.body, rec.Code, rec.Body, tt.want)
		}
	}
	// The model documents its documents in its account as its own endpoint.
	rec := do(t, h, "GET", "/", "", nil)
	if !strings.Contains(rec.Body.String(), `"databaseAccountEndpoint":"https://model.test/"`) {
		t.Errorf("account: %s", rec.Body)
	}
}

func TestNewAndLifecycle(t *testing.T) {
	for _, o := range []cosmosmodel.Options{
		{ProvisionedRU: -1},
		{Backend: &url.URL{Scheme: "ftp", Host: "x"}},
		{Backend: &url.URL{Path: "/nohost"}},
	} {
		if _, err := cosmosmodel.New(o); err == nil || !strings.Contains(err.Error(), "cosmosmodel:") {
			t.Errorf("New(%+v): %v, want an error", o, err)
		}
	}
	m, err := cosmosmodel.New(cosmosmodel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m.URL() != "" || m.Client() != nil || m.ClientOptions() != nil || m.NewHTTPClient() != nil {
		t.Errorf("before Start: URL %q, Client %v", m.URL(), m.Client())
	}
	if _, err := m.NewClient(nil); err == nil {
		t.Errorf("NewClient before Start: no error")
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err == nil {
		t.Errorf("second Start: no error")
	}
	resp, err := m.Client().Get(m.URL())
	if err != nil || resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("GET %s: %v %v", m.URL(), err, resp)
	}
	resp.Body.Close()
	own := m.NewHTTPClient()
	if own == m.Client() {
		t.Errorf("NewHTTPClient returned the shared client")
	}
	if resp, err = own.Get(m.URL()); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s with NewHTTPClient: %v %v", m.URL(), err, resp)
	}
	resp.Body.Close()
	if err := m.Close(); err != nil {
		t.Error(err)
	}
	if err := m.Close(); err != nil {
		t.Error(err)
	}
	if err := m.Start(); err == nil {
		t.Errorf("Start after Close: no error")
	}
	p, _ := cosmosmodel.New(cosmosmodel.Options{Backend: &url.URL{Scheme: "https", Host: "127.0.0.1:1"}})
	if _, err := p.Items("db", "c"); err == nil {
		t.Errorf("Items in proxy mode: no error")
	}
	p.Close()
}

// TestNoSecretInErrors checks that a backend URL's password and SAS
// signature reach neither New's error nor the answer to a request the
// backend did not answer.
func TestNoSecretInErrors(t *testing.T) {
	_, err := cosmosmodel.New(cosmosmodel.Options{Backend: &url.URL{Scheme: "ftp", User: url.UserPassword("u", "SECRETPW"), Host: "x", RawQuery: "sig=SECRETSIG"}})
	if err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("New: %v; want an error without the secrets", err)
	}
	m, err := cosmosmodel.New(cosmosmodel.Options{Backend: &url.URL{Scheme: "https", User: url.UserPassword("u", "SECRETPW"), Host: "127.0.0.1:1", RawQuery: "sig=SECRETSIG"}})
	if err != nil {
		t.Fatal(err)
	}
	rec := do(t, m.Handler(), "GET", "/dbs/db", "", nil)
	if rec.Code != 503 || strings.Contains(rec.Body.String(), "SECRET") {
		t.Errorf("unreachable backend: %d %s; want 503 without the secrets", rec.Code, rec.Body)
	}
}
